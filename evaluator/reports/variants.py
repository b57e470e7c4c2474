"""The ``variants`` and ``gate`` blocks of an ONNX report (deployment variants scored beside their plain parent), their
terminal rows and their report.md section."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from xfverify.converter.variant_spec import VariantFile, VariantSpec
from xfverify.evaluator.analysis.agreement import OnnxAgreement
from xfverify.evaluator.analysis.metrics import PairedDifference
from xfverify.evaluator.analysis.variant_nodes import PrecisionBreaks, rows_for
from xfverify.evaluator.process.tasks import RuntimeInfo
from xfverify.models.user_input import shown


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paired(_Block):
    """A variant's top-1 error minus a reference's on the same images, in percentage points."""

    delta: float
    ci95: tuple[float, float] = Field(description="Newcombe's paired 95 % interval")
    right_to_wrong: int
    wrong_to_right: int
    mcnemar_p: float

    @classmethod
    def of(cls, paired: PairedDifference) -> "Paired":
        return cls(delta=round(paired.delta, 4), ci95=(round(paired.ci95[0], 4), round(paired.ci95[1], 4)),
                   right_to_wrong=paired.right_to_wrong, wrong_to_right=paired.wrong_to_right,
                   mcnemar_p=paired.p_value)

    def text(self) -> str:
        return (f"{self.delta:+.2f} points (95% CI {self.ci95[0]:+.2f} to {self.ci95[1]:+.2f}; "
                f"{self.right_to_wrong} right->wrong, {self.wrong_to_right} wrong->right; McNemar p = {self.mcnemar_p:.3g})")


class CalibrationInfo(_Block):
    """The images int8 static quantisation was calibrated on: kept apart from the scored ones."""

    path: str
    layout: str
    n_images: int
    manifest_sha256: str
    tensors_sha256: str = Field(description="of the calibration tensors, from the run's preprocessing and tensor cache")
    preprocess: str
    rule: Optional[str] = Field(default=None, description="--calibration-split: which images of --data were held out")
    disjoint: str = Field(description="how it was checked that no calibration image is scored")


class VariantResult(_Block):
    """One deployment variant scored on the plain run's tensors, against the plain file and the native run."""

    name: str
    spec: VariantSpec
    made: Optional[VariantFile] = Field(description="how xfverify made it (None: the user's own file)")
    path: str
    sha256: str
    from_cache: bool
    runtime: RuntimeInfo
    tensors_sha256: str
    n_scored: int
    top1_error: Optional[float]
    top1_error_ci95: Optional[tuple[float, float]]
    top5_error: Optional[float]
    vs_plain: Paired
    agreement_plain: OnnxAgreement = Field(description="against the plain ONNX file's outputs")
    vs_native: Optional[Paired]
    agreement_native: Optional[OnnxAgreement]
    images_per_s: Optional[float]
    compute_s: float
    time_over_plain: Optional[float] = Field(description="compute seconds, variant / plain, same provider, this run")
    nodes: Optional[PrecisionBreaks] = None
    remedy_of: Optional[str] = Field(default=None, description="the variant this one remedies (nodes kept in float)")
    recovered_points: Optional[float] = Field(default=None, description="remedied: top-1 error points won back")
    time_over_remedied: Optional[float] = Field(default=None, description="remedied: compute seconds / its variant's")


class VariantsBlock(_Block):
    """The plain file's deployment variants, each scored as the plain file is."""

    plain_top1_error: Optional[float]
    plain_images_per_s: Optional[float]
    providers: list[str] = Field(description="the plain run's providers: every variant runs under them")
    calibration: Optional[CalibrationInfo]
    results: list[VariantResult]


class Gate(_Block):
    """What a pipeline can gate on (``--max-top1-drop``, ``--fail-on-mismatch``): exit status 3 when ``failures``."""

    max_top1_drop: Optional[float]
    fail_on_mismatch: bool
    failures: list[str]


def _f(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def variant_rows(block: VariantsBlock) -> list[tuple[str, str]]:
    rows = []
    for result in block.results:
        speed = f"; {result.time_over_plain:.2f}x plain's time" if result.time_over_plain is not None else ""
        rows.append((f"variant {result.name}",
                     f"top-1 error {_f(result.top1_error)} %, {result.vs_plain.delta:+.2f} points vs plain "
                     f"(CI {result.vs_plain.ci95[0]:+.2f} to {result.vs_plain.ci95[1]:+.2f}), "
                     f"{result.agreement_plain.top1_agreement:.2f} % agreement{speed}"))
    return rows


def variants_markdown(block: VariantsBlock) -> list[str]:
    """report.md's section: the table, the calibration, and per variant where its precision breaks."""
    lines = ["## Deployment variants", "",
             f"Each variant ran under {', '.join(block.providers)} on the plain run's tensors; the plain file's top-1 "
             f"error is {_f(block.plain_top1_error)} %.", ""]
    if block.calibration:
        c = block.calibration
        lines += [f"Calibration: {c.n_images} images from `{shown(c.path)}` ({c.layout}), manifest sha256 "
                  f"`{c.manifest_sha256[:16]}`, tensors sha256 `{c.tensors_sha256[:16]}`, preprocessing {c.preprocess}; "
                  f"{c.disjoint}." + (f" Chosen by {c.rule}." if c.rule else ""), ""]
    lines += ["| variant | top-1 error % | vs plain (points, 95% CI) | vs native | agreement with plain | "
              "time / plain |", "|---|---|---|---|---|---|"]
    for r in block.results:
        native = r.vs_native.text() if r.vs_native else "n/a"
        lines.append(f"| {shown(r.name)} | {_f(r.top1_error)} | {r.vs_plain.text()} | {native} | "
                     f"{r.agreement_plain.top1_agreement:.2f} % ({r.agreement_plain.n_flips} flips), "
                     f"{100 * r.agreement_plain.within_tolerance:.2f} % of elements within tolerance | "
                     f"{'n/a' if r.time_over_plain is None else f'{r.time_over_plain:.2f}x'} |")
    for r in block.results:
        if r.made and r.made.notes:
            lines += ["", f"- {shown(r.name)}: " + "; ".join(r.made.notes)]
        if r.remedy_of:
            lines.append(f"- {shown(r.name)} remedies {shown(r.remedy_of)}: {r.recovered_points:+.2f} points of top-1 "
                         f"error won back at {'n/a' if r.time_over_remedied is None else f'{r.time_over_remedied:.2f}x'} "
                         "its time")
        if r.nodes:
            lines += ["", f"### Where {shown(r.name)}'s precision breaks", "",
                      f"On {len(r.nodes.image_ids)} worst-agreeing image(s), {r.nodes.n_matched} tensors matched with "
                      f"the plain file's by name. **{r.nodes.verdict}**", "",
                      "| node | op | SQNR dB | dB below its inputs' | noise added (N/S) | scaled diff |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {shown(n.node)} | {n.op_type} | {n.sqnr_db:.1f} | {n.sqnr_lost_db:.1f} | {n.noise_added:.3g} | "
                      f"{n.scaled_diff:.3g} |"
                      for n in rows_for(r.nodes.nodes, r.nodes.costliest)]
    return lines
