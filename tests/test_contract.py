"""The serving contract has one owner, and every process imports one copy of the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from predilect import contract

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = (
    "predilect",
    "kernels",
    "models",
    "training",
    "build",
    "serving",
    "client",
    "dicom",
    "benchmarks",
    "model_repository",
    "tests",
)
# Every string of the contract but file names, version numbers and eye letters, which are
# too short or too common to grep for (tests name temp files model.onnx, say).
UNGUARDED = {
    "CONFIG_FILENAME",
    "ONNX_FILENAME",
    "PLAN_FILENAME",
    "DALI_FILENAME",
    "TRITON_VERSION",
    "RESULT_SCHEMA_VERSION",
    "RIGHT_EYE",
    "LEFT_EYE",
}
GUARDED = {
    name: value
    for name, value in vars(contract).items()
    if name.isupper() and isinstance(value, str) and name not in UNGUARDED
}


def _sources() -> list[Path]:
    return sorted(p for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*.py") if "results" not in p.parts)


def test_contract_guard_covers_tensor_names_and_metadata_keys_when_collected() -> None:
    names = {contract.IMAGE, contract.PIXELS, contract.LOGITS, contract.PROBABILITIES, contract.ENSEMBLE}
    assert names | {contract.KEY_CATALOG, *contract.ERROR_KINDS} <= set(GUARDED.values())


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_contract_string_is_spelled_only_in_contract_module_when_grepped(name: str) -> None:
    value = GUARDED[name]
    literal = re.compile(r"""(["'])""" + re.escape(value) + r"\1")
    offenders = []
    for path in _sources():
        if path == Path(contract.__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # DICOM's own vocabulary (an SR content item of ValueType "IMAGE") is not ours.
            if literal.search(line) and "ValueType" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, f"{name} = {value!r} is spelled outside predilect/contract.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("text", ["R", "right", "OD", "od", " R "])
def test_parse_eye_returns_right_when_spelled_any_accepted_way(text: str) -> None:
    assert contract.parse_eye(text) == contract.RIGHT_EYE


def test_parse_eye_raises_naming_spellings_when_unknown() -> None:
    with pytest.raises(ValueError, match="OD/OS"):
        contract.parse_eye("both")


def test_contract_imports_only_standard_library_when_loaded() -> None:
    code = (
        "import sys; before = set(sys.modules); import predilect.contract; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(m for m in new if m not in sys.stdlib_module_names and m != 'predilect'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _module_files_in_subprocess(cwd: Path) -> str:
    code = "import predilect.training.train as t, predilect.catalog as c; print(t.__file__, c.__file__)"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_subprocess_imports_same_files_as_test_process_when_run_from_checkout_root() -> None:
    import predilect.catalog
    import predilect.training.train

    here = f"{predilect.training.train.__file__} {predilect.catalog.__file__}"
    assert _module_files_in_subprocess(ROOT).split() == here.split()
    assert _module_files_in_subprocess(Path("/")).split() == here.split()


@pytest.mark.parametrize("kind", contract.ERROR_KINDS)
def test_parse_error_message_reads_kind_and_detail_when_triton_prefixed_the_message(kind: str) -> None:
    message = contract.error_message(kind, "not a JPEG or PNG image: payload of 10 bytes")
    assert contract.parse_error_message(message) == (kind, "not a JPEG or PNG image: payload of 10 bytes")
    forwarded = f"in ensemble '{contract.ENSEMBLE}', {message}"  # what the ensemble makes of a step's error
    assert contract.parse_error_message(forwarded) == (kind, "not a JPEG or PNG image: payload of 10 bytes")


@pytest.mark.parametrize(
    "message",
    ["Request for unknown model: 'x' is not found", "Exceeds maximum queue size", "image rejected: old wording", ""],
)
def test_parse_error_message_returns_none_when_message_has_no_tag(message: str) -> None:
    assert contract.parse_error_message(message) is None


def test_error_message_raises_value_error_when_kind_unknown() -> None:
    with pytest.raises(ValueError, match="error kind must be one of"):
        contract.error_message("teapot", "short and stout")
