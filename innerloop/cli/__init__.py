"""The ``innerloop`` command (``innerloop.cli.main``)."""
