"""A screening result as a DICOM Comprehensive SR (highdicom), derived from its source instance.

The SR copies the patient and study modules of the source, as a derived document does, and
references the source instance (and frame) it was computed from; it names the model, its
version and the digests of the catalog and referral rules, the eye (the source's laterality, as
a concept modifier of the report), the gradability and the decision. Per-disease probabilities
are reported only for a gradable image (an ungradable one has no disease decision). A positive
finding with a heatmap carries its peak as a spatial coordinate (SCOORD POINT, in the source
frame's pixel coordinates, selected from the source image), named after the kind of map.

Its text is UTF-8 and says so (SpecificCharacterSet ``ISO_IR 192``): the em dash of a gradability
and a patient's name in any script round-trip, and pydicom never falls back to replacement
characters (with a warning per instance). The private coding scheme of the catalog's diseases is
declared in the Coding Scheme Identification Sequence. It is built locally and never sent to the
screening server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from predilect import contract
from predilect.catalog import Catalog
from predilect.client.results import ScreeningResult
from predilect.dicom.reader import identity, pydicom_module

if TYPE_CHECKING:
    from pydicom import Dataset

CODING_SCHEME = "99PREDILECT"  # private scheme for the catalog's diseases
UTF8 = "ISO_IR 192"
_SOURCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
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


def _private(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


def _source_image(source: Dataset, frame: int | None, relationship: Any, name: Any) -> Any:
    import highdicom as hd

    return hd.sr.ImageContentItem(
        name=name,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=frame if int(source.get("NumberOfFrames", 1) or 1) > 1 else None,
        relationship_type=relationship,
    )


def _finding(result: ScreeningResult, concept: Any, source: Dataset, frame: int | None) -> Any:
    """A positive finding; with its heatmap's peak as a SCOORD POINT selected from the source image."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    item = hd.sr.CodeContentItem(
        name=codes.DCM.Finding, value=concept, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    heatmap = result.heatmap(concept.value)
    if heatmap is None:
        return item
    point = np.array([[heatmap.peak[0] * int(source.Columns), heatmap.peak[1] * int(source.Rows)]], dtype=float)
    meaning = {"evidence": "Peak of the evidence map", "attention": "Peak of the attention map"}
    scoord = hd.sr.ScoordContentItem(
        name=_private("heatmap_peak", meaning.get(heatmap.kind or "", "Peak of the heatmap")),
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=point,
        pixel_origin_interpretation=hd.sr.PixelOriginInterpretationValues.FRAME,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )
    scoord.ContentSequence = hd.sr.ContentSequence(
        [_source_image(source, frame, hd.sr.RelationshipTypeValues.SELECTED_FROM, codes.DCM.SourceOfMeasurement)]
    )
    item.ContentSequence = hd.sr.ContentSequence([scoord])
    return item


def _content(result: ScreeningResult, source: Dataset, catalog: Catalog, *, frame: int | None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    unity = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(value="18748-4", scheme_designator="LN", meaning="Diagnostic imaging report")
    )
    _, eye = identity(source)

    def text(value: str, meaning: str, content: str) -> Any:
        return hd.sr.TextContentItem(name=_private(value, meaning), value=content, relationship_type=contains)

    items: list[Any] = []
    if eye is not None:  # the eye the photograph is of, from the source's (Image) Laterality
        side = codes.SCT.Right if eye == contract.RIGHT_EYE else codes.SCT.Left
        items.append(
            hd.sr.CodeContentItem(
                name=codes.SCT.Laterality, value=side, relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
            )
        )
    items += [
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=result.model_name, relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=result.model_version, relationship_type=contains),
        text("catalog_digest", "Disease catalog digest", result.catalog_digest),
        text("rules_digest", "Referral rules digest", result.rules_digest),
        _source_image(source, frame, contains, codes.DCM.SourceOfMeasurement),
        text("gradability", "Gradability", result.quality.describe()),
        hd.sr.NumContentItem(
            name=_private("quality_score", "Image quality score"),
            value=result.quality.score,
            unit=unity,
            relationship_type=contains,
        ),
        text("decision", "Screening decision", result.decision),
    ]
    if result.probabilities is not None:  # an ungradable image has no disease decision to report
        for disease in catalog:
            concept = _private(disease.id, disease.name[:64])
            items.append(
                hd.sr.NumContentItem(
                    name=concept, value=result.probabilities[disease.id], unit=unity, relationship_type=contains
                )
            )
            if disease.id in result.positive:
                items.append(_finding(result, concept, source, frame))
    items.append(text("referable", "Referable", "yes" if result.referable else "no"))
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
    report.SpecificCharacterSet = UTF8  # the text is written as UTF-8: declared, so every reader decodes it
    scheme = pydicom_module().Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "Predilect screening catalog"
    scheme.CodingSchemeResponsibleOrganization = manufacturer
    report.CodingSchemeIdentificationSequence = [scheme]
    report.ManufacturerModelName = result.model_name[:64]
    report.SoftwareVersions = result.model_version[:64]
    report.SeriesDescription = "Predilect fundus screening"
    return report
