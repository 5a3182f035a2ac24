"""The ``innerloop`` command: ``main`` (the app, one-line errors), ``train``, ``evaluate``, ``info``, ``report``."""
