"""Export a model as a bioimage.io model package (spec 0.5) that ``bioimageio.core`` tests and tiles.

The package holds two weight entries: ``pytorch_state_dict`` (a plain state dict, loadable with
``weights_only=True``, and the architecture as one source file assembled from our modules) and
``torchscript`` (traced network inside a scripted wrapper, ``parent: pytorch_state_dict``).

Geometry. Outputs have the input's size: the wrapper pads what the network's valid convolutions
remove (see :mod:`packaged_network`). The input declares padding with -1e30, which the wrapper
reads as "outside the scan", and each output a halo of
``(RF - 1) / 2`` voxels, the receptive field's half-width, so a tile's kept part depends only on real
data: bioimage.io's own tiling then gives exactly the labels of one pass over the whole scan. The
smallest input block is ``RF`` voxels per axis (173^3 for AFN-6 at rates 2-14): a block of the
minimum size keeps one voxel, so tiles should be much larger (the block step is 16 voxels).

Normalisation. The spec's ``zero_mean_unit_variance`` has no mask, and our z-score is computed
inside the brain (non-zero voxels) with everything outside set to 0. A wrapper sees only one tile,
so it cannot compute a scan's statistics either. The input is therefore declared pre-normalised,
and the package's README says how (napari-autofocus normalises before it runs a package).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from napari_autofocus.errors import AutofocusError, CheckpointError
from napari_autofocus.exchange.exchange_input import ExchangeInput, exchange_input
from napari_autofocus.exchange.package_import import EXPORT_MARKER, package_config
from napari_autofocus.exchange.packaged_network import OUTSIDE
from napari_autofocus.inference.normalization import padding_value

PACKAGE_SUFFIX = ".bioimageio.zip"
BLOCK_STEP = 16
SPATIAL = ("z", "y", "x")


def package_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{PACKAGE_SUFFIX}"


def halo_of(net) -> int:
    """Output halo per side: the receptive field's half-width."""
    return (int(net.receptive_field) - 1) // 2


def export_bioimageio(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    scan: Path | None = None,
    labels: Path | None = None,
    **hints,
) -> Path:
    """Write ``OUT/<name>.bioimageio.zip``; returns its path. An existing file is replaced only with
    ``force`` and only when it is a package this tool exported. ``scan``/``labels``: the test
    input's source (default: the bundled sample with the model's channels); ``hints``: model card
    fields for a reference checkpoint (``arch``, ``modalities``, ...)."""
    import torch

    from napari_autofocus.exchange.packaged_network import PackagedNetwork
    from napari_autofocus.nets.checkpoints import load_model

    net, card = load_model(model_path, **hints)
    name = name or Path(model_path).name.split(".")[0]
    target = package_path(out_dir, name)
    _check_target(target, force)
    pad = padding_value(card.normalization)
    packaged = PackagedNetwork(card.arch, card.in_channels, card.num_classes, card.options, pad)
    packaged.outputs.net.load_state_dict(net.state_dict())
    packaged.eval()
    case = exchange_input(card, 2 * halo_of(net) + 1, BLOCK_STEP, scan, labels)
    with torch.inference_mode():
        outputs = [t.numpy() for t in packaged(torch.from_numpy(case.image))]
    if not outputs[0].any():
        raise AutofocusError(
            f"the model labels all of {case.source} as background; bioimage.io needs test outputs that "
            "are not all zero (give another scan with --sample)"
        )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="napari-autofocus-export-") as staging:
        root = Path(staging)
        try:
            descr = _describe(root, name, card, net, packaged, case, outputs)
        except ValueError as exc:  # pydantic's ValidationError: the spec refuses a field
            raise AutofocusError(f"bioimage.io's spec refuses the package of {name}: {exc}") from None
        _write_package(descr, target)
    return target


def _check_target(target: Path, force: bool) -> None:
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise AutofocusError(f"{target} exists; pass --force to replace a package this tool exported")
    try:
        if target.is_symlink() or not target.is_file():
            raise CheckpointError(f"{target}: not a file")
        package_config(target)
    except CheckpointError:
        raise AutofocusError(
            f"{target} exists and is not a package napari-autofocus exported: it is kept"
        ) from None


def _write_package(descr, target: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    from napari_autofocus.io.atomic import atomic_path

    with atomic_path(target) as tmp:
        save_bioimageio_package(descr, output_path=tmp)


def _describe(root: Path, name: str, card, net, packaged, case: ExchangeInput, outputs: list[np.ndarray]):
    """Write the package's files into ``root`` and build its validated description."""
    import torch
    from bioimageio.spec.model import v0_5

    from napari_autofocus import __version__
    from napari_autofocus.exchange.architecture_source import ENTRY, architecture_source
    from napari_autofocus.exchange.package_docs import (
        PAPER,
        authors_of,
        cover_image,
        licence_of,
        package_readme,
    )

    (root / "architecture.py").write_text(architecture_source(__version__), encoding="utf-8")
    torch.save(packaged.state_dict(), root / "weights.pt")
    torch.jit.save(torchscript(packaged, card), root / "weights_torchscript.pt")
    geometry = net.autofocus_geometry()
    names = ["labels", "probabilities"] + [g["name"].lower() for g in geometry]
    np.save(root / "test_input.npy", case.image)
    for tensor_name, array in zip(names, outputs, strict=True):
        np.save(
            root / f"test_{tensor_name}.npy", array.astype(np.uint8) if tensor_name == "labels" else array
        )
    cover_image(root / "cover.png", case, outputs, [g["name"] for g in geometry], card)
    halo, spacing = halo_of(net), card.target_spacing or card.spacing or [1.0, 1.0, 1.0]
    (root / "README.md").write_text(package_readme(name, card, net, halo, case), encoding="utf-8")

    def space(i: int, axis_id: str, output: bool):
        common = {"id": v0_5.AxisId(axis_id), "scale": float(spacing[i]), "unit": "millimeter"}
        if not output:
            return v0_5.SpaceInputAxis(
                size=v0_5.ParameterizedSize(min=2 * halo + 1, step=BLOCK_STEP), **common
            )
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId("scan"), axis_id=v0_5.AxisId(axis_id))
        return v0_5.SpaceOutputAxisWithHalo(size=size, halo=halo, **common)

    def axes(channel_names: list[str], output: bool):
        channels = v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in channel_names])
        return [v0_5.BatchAxis(), channels] + [space(i, a, output) for i, a in enumerate(SPATIAL)]

    def output(tensor_name: str, channel_names: list[str], description: str, data):
        return v0_5.OutputTensorDescr(
            id=v0_5.TensorId(tensor_name),
            description=description,
            axes=axes(channel_names, output=True),
            test_tensor=v0_5.FileDescr(source=root / f"test_{tensor_name}.npy"),
            data=data,
        )

    probability = v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
    classes = [_identifier(card.class_names.get(str(i), f"class {i}")) for i in range(card.num_classes)]
    tensors_out = [
        output(
            "labels",
            ["label"],
            "Label map (the class with the largest probability); 0 outside the scan.",
            v0_5.NominalOrOrdinalDataDescr(values=list(range(card.num_classes)), type="uint8"),
        ),
        output("probabilities", classes, "Softmax class probabilities.", probability),
    ]
    for g in geometry:
        tensors_out.append(
            output(
                g["name"].lower(),
                [f"rate_{r}" for r in g["rates"]],
                f"Attention of {g['name']}: each rate's per-voxel weight (sum 1); NaN outside the scan.",
                probability,
            )
        )
    modalities = card.modalities or [f"channel {i}" for i in range(card.in_channels)]
    scan_input = v0_5.InputTensorDescr(
        id=v0_5.TensorId("scan"),
        description="The scan, one channel per modality, normalised (see the README); -1e30 marks outside.",
        axes=axes([_identifier(m) for m in modalities], output=False),
        test_tensor=v0_5.FileDescr(source=root / "test_input.npy"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        pad=v0_5.ConstantPadding(value=OUTSIDE),
    )
    version = torch.__version__.split("+")[0]
    weights = v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=root / "weights.pt",
            architecture=v0_5.ArchitectureFromFileDescr(
                source=root / "architecture.py",
                callable=v0_5.Identifier(ENTRY),
                kwargs={
                    "arch": card.arch,
                    "in_channels": card.in_channels,
                    "num_classes": card.num_classes,
                    "options": json.loads(json.dumps(card.options)),
                    "pad_value": padding_value(card.normalization),
                },
            ),
            pytorch_version=v0_5.Version(version),
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=root / "weights_torchscript.pt",
            parent="pytorch_state_dict",
            pytorch_version=v0_5.Version(version),
        ),
    )
    return v0_5.ModelDescr(
        name=_package_name(name),
        description=(card.description or f"{card.arch} segmentation network")
        + f"; autofocus network ({card.arch}) from napari-autofocus, with its attention maps.",
        authors=[v0_5.Author(name=a) for a in authors_of(card)],
        cite=[v0_5.CiteEntry(text=PAPER["text"], url=PAPER["url"])],
        license=v0_5.LicenseId(licence_of(card)),
        documentation=v0_5.FileDescr(source=root / "README.md"),
        covers=[v0_5.FileDescr(source=root / "cover.png")],
        tags=["3d", "segmentation", "autofocus", "attention", "pytorch", "napari-autofocus"]
        + (["brain", "mri"] if card.in_channels == 4 else []),
        inputs=[scan_input],
        outputs=tensors_out,
        weights=weights,
        config=v0_5.Config(
            **{
                EXPORT_MARKER: {
                    "card": json.loads(card.to_json()),
                    "exported_by": f"napari-autofocus {__version__}",
                    "halo": halo,
                    "test_input": {
                        "scan": case.source,
                        "scan_start": list(case.scan_start),
                        "start": list(case.start),
                        "shape": list(case.shape),
                    },
                }
            }
        ),
    )


def torchscript(packaged, card):
    """The wrapper scripted around the traced network (tracing is shape-generic for our networks)."""
    import torch

    from napari_autofocus.exchange.packaged_network import BoxedPrediction

    net = packaged.outputs
    size = int(net.net.min_input_size)
    size += (-size) % int(net.net.input_multiple)
    example = torch.zeros((1, card.in_channels, size, size, size))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks that read sizes
        traced = torch.jit.trace(net, example, check_trace=False)
    return torch.jit.script(
        BoxedPrediction(
            traced,
            packaged.margin,
            packaged.input_multiple,
            packaged.pad_value,
            packaged.num_classes,
            packaged.attention_sizes,
        )
    )


def _identifier(text: str) -> str:
    """A channel name the spec accepts (letters, digits, underscores)."""
    word = "".join(c if c.isalnum() else "_" for c in str(text)).strip("_")
    while "__" in word:
        word = word.replace("__", "_")
    return word or "channel"


def _package_name(name: str) -> str:
    """A display name the spec accepts (5 to 128 characters)."""
    words = " ".join(name.replace("_", " ").split())
    return (words if len(words) >= 5 else f"{words} autofocus model".strip())[:128]
