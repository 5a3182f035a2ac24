"""Every analysis that applies to a learner, written as ``report.md`` + ``report.json`` + PNG figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import figures
from .adaptation import adaptation_path, held_out_tasks, parameter_change, representation_similarity
from .blackbox import cnp_probe, snail_attention
from .embedding import embedding_similarity
from .rules import has_state, response_curves, rule_readout

_log = logging.getLogger(__name__)


def _kind(learner) -> str:
    if hasattr(learner, "family") and hasattr(learner, "sample"):
        return "policy"
    if hasattr(learner, "task_adapt") and hasattr(learner, "adapted_names"):
        return "gradient"
    if type(learner).__name__ == "SNAIL" or hasattr(getattr(learner, "model", None), "blocks"):
        return "snail"
    if hasattr(getattr(learner, "model", None), "encode"):
        return "cnp"
    if hasattr(learner, "head") and hasattr(learner, "embed") and hasattr(learner, "logits"):
        return "embedding"
    return "other"


def _gradient_scale(learner, source) -> float:
    """The largest |support gradient| of one held-out task at theta (the sweep range of the response curves)."""
    from torch.func import grad

    sx, sy, _, _ = next(held_out_tasks(learner, source, 1))
    theta = {n: p.detach() for n, p in learner.model_params().items()}
    fast = {n: theta[n] for n in learner.adapted_names}
    z = learner.embed(theta, sx)
    g = grad(lambda f: learner.support_loss({**theta, **f}, (z, sy)))(fast)
    return max(float(t.abs().max()) for t in g.values()) or 1.0


def analyze(
    learner,
    source,
    out_dir: str | Path | None = None,
    steps: int | None = None,
    num_tasks: int = 100,
    similarity_tasks: int = 20,
    finetune_lr: float | None = None,
) -> dict:
    """Run what applies to ``learner`` on the fixed evaluation tasks of ``source``; with ``out_dir``, write
    ``report.json``, ``report.md`` and the figures there. Returns the report dict. The similarity pools the
    queries of the first ``similarity_tasks`` tasks (their activations are held at once: conv maps are large).

    Gradient-based learners: parameter change, representation similarity (adapted and fine-tuned), the update
    rule's readout and response curves. Meta-RL learners: parameter change, rule readout. SNAIL: attention.
    CNP: the linear probe of its representation (sources with ``task_parameters``). Embedding + head learners
    (ProtoNets, ...): the similarity after a fine-tune of the embedding (``embedding_similarity``; ``steps``
    default 10). ``finetune_lr``: the plain fine-tune's rate (default: the rule's; embedding learners 0.01).
    """
    kind = _kind(learner)
    report: dict = {"learner": type(learner).__name__, "kind": kind, "tasks": num_tasks, "notes": []}
    rule = getattr(learner, "update_rule", None)
    if kind in ("gradient", "policy"):
        report["parameter_change"] = parameter_change(learner, source, steps, num_tasks)
    if kind == "gradient":
        report["similarity"] = representation_similarity(
            learner, source, steps, min(num_tasks, similarity_tasks), finetune_lr=finetune_lr
        )
    if rule is not None:
        readout = rule_readout(rule)
        params = learner.model_params() if kind == "gradient" else learner.params()
        adapted = {n: p.detach() for n, p in params.items() if n in set(getattr(learner, "adapted_names", params))}
        if kind == "gradient" and has_state(rule, adapted):
            sx, sy, _, _ = next(held_out_tasks(learner, source, 1))
            loss = float(learner.support_loss(adaptation_path(learner, sx, sy, 0)[0], (learner.embed(params, sx), sy)))
            readout["response"] = response_curves(rule, adapted, scale=_gradient_scale(learner, source), loss=loss)
        report["rule"] = {"describe": rule.describe(), **readout}
    if kind == "snail":
        report["attention"] = snail_attention(learner, source, num_tasks=num_tasks)
    if kind == "cnp":
        if hasattr(source, "task_parameters"):
            report["cnp_probe"] = cnp_probe(learner, source, num_tasks=max(num_tasks, 200))
        else:
            report["notes"].append(f"{type(source).__name__} has no task_parameters: no probe of CNP's r")
    if kind == "embedding":
        report["similarity"] = embedding_similarity(
            learner,
            source,
            steps if steps is not None else 10,
            0.01 if finetune_lr is None else finetune_lr,
            min(num_tasks, similarity_tasks),
        )
    if kind == "other":
        report["notes"].append(f"{type(learner).__name__} has no inner loop and no analysis of its own here")
    if out_dir is not None:
        write_report(report, Path(out_dir))
    return report


def write_report(report: dict, out: Path) -> list[Path]:
    """``report.json``, the figures that apply and ``report.md`` (which shows them) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    shown: list[tuple[str, str]] = []
    if "parameter_change" in report:
        shown.append(
            (
                "Parameter change per layer",
                figures.parameter_change_figure(report["parameter_change"], out / "parameter_change.png").name,
            )
        )
    if "similarity" in report:
        shown.append(
            ("Representation similarity", figures.similarity_figure(report["similarity"], out / "similarity.png").name)
        )
    rule = report.get("rule", {})
    if "lslr" in rule or "metasgd" in rule:
        shown.append(("Learned rates", figures.rates_figure(rule, out / "rates.png").name))
    if "metacurvature" in rule:
        shown.append(("Meta-Curvature spectra", figures.spectra_figure(rule, out / "spectra.png").name))
    if "response" in rule:
        shown.append(
            ("Learned optimizer response", figures.response_figure(rule["response"], out / "response.png").name)
        )
    if report.get("attention", {}).get("episodes"):
        shown.append(("SNAIL attention", figures.attention_figure(report["attention"], out / "attention.png").name))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report, shown))
    written = [out / "report.json", out / "report.md", *(out / f for _, f in shown)]
    _log.info("analysis written to %s (%s)", out, ", ".join(p.name for p in written))
    return written


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown(report: dict, shown: list[tuple[str, str]]) -> str:
    """The report as Markdown: tables of the numbers, the figures by file name."""
    lines = [f"# Analysis of {report['learner']}", ""]
    if "parameter_change" in report:
        pc = report["parameter_change"]
        lines += [f"## Relative parameter change (mean ± std over {pc['tasks']} tasks)", ""]
        lines += ["| layer | adapted | " + " | ".join(f"step {s}" for s in pc["steps"]) + " |"]
        lines += ["| --- | --- |" + " --- |" * len(pc["steps"])]
        for layer, r in pc["layers"].items():
            cells = " | ".join(f"{m:.4g} ± {s:.2g}" for m, s in zip(r["mean"], r["std"]))
            lines.append(f"| {layer} | {'yes' if r['adapted'] else 'no'} | {cells} |")
        if any(pc["nonfinite"]):
            lines.append(f"\nTasks left out as non-finite (diverged), per step: {pc['nonfinite']}")
        lines.append("")
    if "similarity" in report and "adapted" not in report["similarity"]:
        lines += _embedding_markdown(report["similarity"])
    elif "similarity" in report:
        sim = report["similarity"]
        measures = list(next(iter(sim["adapted"].values())).keys()) if sim["layers"] else []
        lines += [
            f"## Similarity to theta's activations after {sim['steps']} steps ({sim['tasks']} tasks' queries)",
            "",
        ]
        lines += ["| layer | " + " | ".join(f"{m} adapted | {m} fine-tune" for m in measures) + " | CKA per task |"]
        lines += ["| --- |" + " --- | --- |" * len(measures) + " --- |"]
        for n in sim["layers"]:
            cells = " | ".join(f"{_fmt(sim['adapted'][n][m])} | {_fmt(sim['finetune'][n][m])}" for m in measures)
            pt = sim["cka_per_task"][n]
            lines.append(f"| {n} | {cells} | {pt['mean']:.4f} ± {pt['std']:.2g} |")
        lines += ["", f"Fine-tune: plain SGD on every parameter, rate {sim['finetune_lr']:g}."]
        if sim["nonfinite"]:
            lines.append(f"{sim['nonfinite']} tasks left out: non-finite activations (a diverged adaptation).")
        lines.append("")
    rule = report.get("rule")
    if rule:
        lines += [f"## Update rule: {rule['describe']}", ""]
        for name, stats in rule.get("metasgd", {}).items():
            lines.append(
                f"- Meta-SGD `{name}`: mean {stats['mean']:.4g}, range [{stats['min']:.4g}, {stats['max']:.4g}], negative {stats['negative']:.1%}"
            )
        for name, rates in rule.get("lslr", {}).items():
            lines.append(f"- LSLR `{name}`: " + ", ".join(f"{r:.4g}" for r in rates))
        for name, modes in rule.get("metacurvature", {}).items():
            lines.append(
                f"- Meta-Curvature `{name}`: "
                + "; ".join(f"mode {i} singular values in [{min(v):.3g}, {max(v):.3g}]" for i, v in enumerate(modes))
            )
        lines.append("")
    if "attention" in report:
        att = report["attention"]
        shares = ", ".join(f"{m:.3f}" for m in att["own_class_share"]["mean"])
        lines += [
            "## SNAIL attention",
            "",
            f"Share of the support attention on the query's own class, per block "
            f"(mean over {att['tasks']} tasks; chance {att['chance']:.3f}): {shares}",
            "",
        ]
    if "cnp_probe" in report:
        probe = report["cnp_probe"]
        lines += [f"## CNP representation probe ({probe['tasks']} tasks, r of size {probe['representation_size']})", ""]
        lines += ["| target | R² fitted | R² held out |", "| --- | --- | --- |"]
        lines += [f"| {t} | {_fmt(v['r2_fit'])} | {_fmt(v['r2_heldout'])} |" for t, v in probe["probe"].items()]
        lines.append("")
    for title, name in shown:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += [f"Note: {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _embedding_markdown(sim: dict) -> list[str]:
    """The section of ``embedding_similarity``'s result: similarity and change per layer, scores before/after."""
    measures = list(next(iter(sim["finetune"].values())).keys()) if sim["layers"] else []
    lines = [
        f"## Similarity to phi's activations after a fine-tune of the embedding ({sim['steps']} SGD steps of "
        f"{sim['finetune_lr']:g} on the support loss; {sim['tasks']} tasks' queries)",
        "",
        "| layer | " + " | ".join(f"{m} fine-tune" for m in measures) + " | CKA per task | relative change |",
        "| --- |" + " --- |" * len(measures) + " --- | --- |",
    ]
    for n in sim["layers"]:
        pt, ch = sim["cka_per_task"][n], sim["change"][n]
        cells = " | ".join(_fmt(sim["finetune"][n][m]) for m in measures)
        lines.append(f"| {n} | {cells} | {pt['mean']:.4f} ± {pt['std']:.2g} | {ch['mean']:.4g} ± {ch['std']:.2g} |")
    sc = sim["scores"]
    lines += [
        "",
        f"Query accuracy {sc['accuracy']['mean']:.4f} ± {sc['accuracy']['std']:.2g} before, "
        f"{sc['finetune_accuracy']['mean']:.4f} ± {sc['finetune_accuracy']['std']:.2g} after the fine-tune; "
        f"support loss {sc['loss']['mean']:.4g} -> {sc['finetune_loss']['mean']:.4g} (mean ± std over tasks).",
    ]
    if sim["nonfinite"]:
        lines.append(f"{sim['nonfinite']} tasks left out: non-finite activations (a diverged fine-tune).")
    return [*lines, ""]
