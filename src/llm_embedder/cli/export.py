"""`export`: write an ONNX (fp32, optionally int8) copy of an embedder for the onnx backends."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import check_choice


@app.command("export")
def export_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Sentence-transformers directory or alias (minilm).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (the model copied, plus onnx/).")],
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="Also write int8 dynamic-quantized weights: 'int8'.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Export MODEL to ONNX, carrying its pooling, prompts and task instructions.

    Load the result with Embedder(OUT, backend="onnx") or backend="onnx-int8" (needs --quantize int8);
    the int8 model is the fast CPU option (see benchmarks/README.md for measured speed and quality).
    """
    from llm_embedder.export import export_onnx

    if quantize is not None:
        check_choice("--quantize", quantize, ("int8",))
    path = export_onnx(model, out, quantize=quantize, overwrite=overwrite)
    kind = "fp32 + int8" if quantize else "fp32"
    Console(markup=False).print(f"exported {model} -> {path} ({kind})", highlight=False, soft_wrap=True)
