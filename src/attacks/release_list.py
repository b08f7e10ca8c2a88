"""``attack.release``: which released versions of a target the joint attack observes (the FP model,
the job's quantized target ``q``, other bit-widths), parsed and checked once, before any work."""
from __future__ import annotations

from dataclasses import dataclass

FP, Q = "fp", "q"


@dataclass(frozen=True)
class Release:
    label: str            # "fp", "4-bit", "1.58-bit", or a control's name
    bits: float | None    # None: the FP model; the job's bits for its own target


def _bits_label(bits: float) -> str:
    return f"{bits:g}-bit"


def parse_releases(cfg) -> list[Release] | None:
    """The releases of ``attack.release`` (None when unset). Raises ValueError with one line naming
    the key, the value and what is allowed: before any work, from src/validate.py."""
    from src.attacks.joint import JOINT_ATTACKS, joint_names
    from src.quant import CONTROLS, FULL_PRECISION
    from src.quant.grid import check_bits

    raw = cfg.attack.get("release")
    if raw is None:
        return None
    items = [raw] if isinstance(raw, (str, int, float)) else list(raw)
    shown = "[" + ",".join(str(x) for x in items) + "]"
    key = f"attack.release={shown}"
    allowed = "fp, q (this job's quantized target) or a bit-width 1..8, 1.58"
    if len(items) < 2:
        raise ValueError(f"{key}: name at least two released versions; allowed items: {allowed}")
    qname = cfg.quant.name
    if qname in FULL_PRECISION:
        raise ValueError(f"{key}: quant={qname} releases only the FP model; choose a quantizer (quant=obc, ...)")
    control = qname in CONTROLS
    bits = None if control else check_bits(cfg.bits)
    out: list[Release] = []
    for x in items:
        s = str(x).strip().lower()
        if s == FP:
            rel = Release(FP, None)
        elif s == Q:
            rel = Release(qname if control else _bits_label(bits), bits)
        else:
            if control:
                raise ValueError(f"{key}: quant={qname} is a float control without bit-widths; allowed items: fp, q")
            try:
                b = check_bits(s)
            except ValueError:
                raise ValueError(f"{key}: unknown release {x!r}; allowed items: {allowed}") from None
            rel = Release(_bits_label(b), b)
        if rel in out:
            raise ValueError(f"{key}: lists the {rel.label} release twice; name each version once")
        out.append(rel)
    own = Release(qname if control else _bits_label(bits), bits)
    if own not in out:
        what = f"its {qname} target" if control else f"its {bits:g}-bit target (q or {bits:g})"
        raise ValueError(f"{key}: this job does not release {', '.join(r.label for r in out if r.label != FP)}; "
                         f"the releases must include {what}, e.g. [fp,q]")
    ref = cfg.attack.get("reference", "fp")
    if ref not in ("matched", "both"):
        raise ValueError(f"{key}: the joint attack needs matched references (every reference model quantized "
                         f"like each release) but attack.reference={ref}; set attack.reference=matched or both")
    if not joint_names(cfg.attack.names):
        raise ValueError(f"{key}: attack.names has no attack with a joint version; allowed: {', '.join(JOINT_ATTACKS)}")
    return out
