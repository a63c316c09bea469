"""Markdown and LaTeX (booktabs) renderings of small tables, without extra dependencies."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.result import fmt


def _cell(v, digits: int) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return fmt(v, digits)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def value_ci(v: float, lo: float, hi: float, digits: int = 4) -> str:
    """'v [lo, hi]' or just 'v' when the interval is missing."""
    if lo is None or not math.isfinite(lo):
        return fmt(v, digits)
    return f"{fmt(v, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}

_GREEK = {"alpha": r"$\alpha$", "beta": r"$\beta$", "gamma": r"$\gamma$", "α": r"$\alpha$",
          "β": r"$\beta$", "γ": r"$\gamma$", "σ": r"$\sigma$", "sigma": r"$\sigma$"}


_UNICODE = {"α": r"$\alpha$", "β": r"$\beta$", "γ": r"$\gamma$", "σ": r"$\sigma$",
            "δ": r"$\delta$", "×": r"$\times$", "±": r"$\pm$", "–": "--", "−": "$-$",
            "≤": r"$\leq$", "≥": r"$\geq$", "∝": r"$\propto$", "←": r"$\leftarrow$"}


def tex_escape(s: str) -> str:
    """Escape LaTeX specials; Greek letters and a few symbols become math (pdflatex-safe)."""
    if s in _GREEK:
        return _GREEK[s]
    return "".join(_UNICODE.get(ch, _TEX.get(ch, ch)) for ch in s)


def to_latex(df: pd.DataFrame, *, caption: str = "", label: str = "", digits: int = 4) -> str:
    cols = [tex_escape(str(c)) for c in df.columns]
    spec = "l" * len(cols)
    out = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption:
        out.append(r"\caption{" + tex_escape(caption) + "}")
    if label:
        out.append(r"\label{" + label + "}")
    out += [r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(cols) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        out.append(" & ".join(tex_escape(_cell(v, digits)) for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, *, caption: str = "",
                digits: int = 4) -> list[Path]:
    """Write ``name``.md and ``name``.tex; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    tex = out / f"{name}.tex"
    md.write_text((f"**{caption}**\n\n" if caption else "") + to_markdown(df, digits))
    tex.write_text(to_latex(df, caption=caption, label=f"tab:{name}", digits=digits))
    return [md, tex]
