"""A screening result as a DICOM Comprehensive SR (highdicom), derived from its source instance.

The SR copies the patient and study modules of the source, as a derived document does, and
references the source instance (and frame) it was computed from; it names the model and its
version. It is built locally and never sent to the screening server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from predilect.catalog import Catalog
from predilect.client.dicom import pydicom_module
from predilect.client.results import ScreeningResult

if TYPE_CHECKING:
    from pydicom import Dataset

CODING_SCHEME = "99PREDILECT"  # private scheme for the catalog's diseases
_SOURCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SpecificCharacterSet",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "IssuerOfPatientID",
    "StudyDescription",
    "PatientAge",
)


def _evidence(source: Dataset) -> Dataset:
    """The header attributes highdicom inherits from (no pixels); absent type-2 attributes empty."""
    pydicom = pydicom_module()
    evidence = pydicom.Dataset()
    for keyword in _SOURCE_ATTRIBUTES:
        value = source.get(keyword)
        if value is not None:
            setattr(evidence, keyword, value)
        elif keyword in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "StudyID",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
        ):
            setattr(evidence, keyword, "")
    return evidence


def _content(result: ScreeningResult, source: Dataset, catalog: Catalog, *, frame: int | None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    unity = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(value="18748-4", scheme_designator="LN", meaning="Diagnostic imaging report")
    )
    items: list[Any] = [
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=result.model_name, relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=result.model_version, relationship_type=contains),
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=frame if int(source.get("NumberOfFrames", 1) or 1) > 1 else None,
            relationship_type=contains,
        ),
    ]
    for disease in catalog:
        concept = hd.sr.CodedConcept(value=disease.id, scheme_designator=CODING_SCHEME, meaning=disease.name[:64])
        items.append(
            hd.sr.NumContentItem(
                name=concept, value=result.probabilities[disease.id], unit=unity, relationship_type=contains
            )
        )
        if disease.id in result.positive:
            items.append(hd.sr.CodeContentItem(name=codes.DCM.Finding, value=concept, relationship_type=contains))
    items.append(
        hd.sr.TextContentItem(
            name=hd.sr.CodedConcept(value="referable", scheme_designator=CODING_SCHEME, meaning="Referable"),
            value="yes" if result.referable else "no",
            relationship_type=contains,
        )
    )
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def structured_report(
    result: ScreeningResult,
    source: Dataset,
    catalog: Catalog,
    *,
    series_number: int = 901,
    instance_number: int = 1,
    manufacturer: str = "Predilect",
) -> Dataset:
    """A Comprehensive SR of ``result`` (computed from ``source``, a pydicom dataset; its pixels
    are not needed): per-disease probabilities as numbers, positive findings as codes."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    if result.sop_instance_uid is not None and result.sop_instance_uid != str(source.SOPInstanceUID):
        raise ValueError(
            f"the result is of instance {result.sop_instance_uid}, not of the source given ({source.SOPInstanceUID})"
        )
    report = hd.sr.ComprehensiveSR(
        evidence=[_evidence(source)],
        content=_content(result, source, catalog, frame=result.frame),
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
    )
    report.ManufacturerModelName = result.model_name[:64]
    report.SoftwareVersions = result.model_version[:64]
    report.SeriesDescription = "Predilect fundus screening"
    return report
