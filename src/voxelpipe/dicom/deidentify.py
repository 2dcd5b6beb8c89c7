"""The attributes of the DICOM Basic Application Level Confidentiality Profile (PS3.15 Annex E, table E.1-1)
and what ``--phi pseudonymise`` / ``--phi drop`` do with them in voxelpipe's tables and attributes.

:data:`CONFIDENTIALITY_PROFILE` lists the table's attributes as ``(group, element, keyword)``; the table's
repeating-group rows (Curve Data 50xx,xxxx; Overlay Data 60xx,3000; Overlay Comments 60xx,4000) are
:data:`REPEATING_GROUPS`, and its "Private attributes" row is every tag of an odd group.

What a flattened metadata column becomes (:func:`column_action`):

- an attribute of the table, or any element nested in a sequence of the table: ``pseudonymise`` replaces each value
  by its keyed hash (:func:`~voxelpipe.core.keys.uid_pseudonym` for a UID, ``2.25.<number>``;
  :func:`~voxelpipe.core.keys.text_pseudonym` for anything else); ``drop`` removes the column;
- a private element (odd group, or nested in a private sequence): removed under both, as the profile does
  (the content of private tags is not known, so it cannot be pseudonymised safely);
- everything else is kept.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache

from voxelpipe.core.keys import text_pseudonym, uid_pseudonym
from voxelpipe.core.types import Phi
from voxelpipe.dicom.flatten import DUPLICATE_PREFIX, dictionary_vr, split_column, tag_name

# (group, element, keyword) of every attribute of table E.1-1, in the table's (alphabetical) order
CONFIDENTIALITY_PROFILE: tuple[tuple[int, int, str], ...] = (
    (0x0008, 0x0050, "AccessionNumber"),
    (0x0018, 0x4000, "AcquisitionComments"),
    (0x0040, 0x0555, "AcquisitionContextSequence"),
    (0x0008, 0x0022, "AcquisitionDate"),
    (0x0008, 0x002A, "AcquisitionDateTime"),
    (0x0018, 0x1400, "AcquisitionDeviceProcessingDescription"),
    (0x0018, 0x11BB, "AcquisitionFieldOfViewLabel"),
    (0x0018, 0x9424, "AcquisitionProtocolDescription"),
    (0x0008, 0x0032, "AcquisitionTime"),
    (0x0008, 0x0017, "AcquisitionUID"),
    (0x0040, 0x4035, "ActualHumanPerformersSequence"),
    (0x0010, 0x21B0, "AdditionalPatientHistory"),
    (0x0040, 0xA353, "AddressTrial"),
    (0x0038, 0x0010, "AdmissionID"),
    (0x0038, 0x0020, "AdmittingDate"),
    (0x0008, 0x1084, "AdmittingDiagnosesCodeSequence"),
    (0x0008, 0x1080, "AdmittingDiagnosesDescription"),
    (0x0038, 0x0021, "AdmittingTime"),
    (0x0000, 0x1000, "AffectedSOPInstanceUID"),
    (0x0010, 0x2110, "Allergies"),
    (0x4000, 0x0010, "Arbitrary"),
    (0x0040, 0xA078, "AuthorObserverSequence"),
    (0x0010, 0x1081, "BranchOfService"),
    (0x0018, 0x1007, "CassetteID"),
    (0x0012, 0x0060, "ClinicalTrialCoordinatingCenterName"),
    (0x0012, 0x0082, "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"),
    (0x0012, 0x0081, "ClinicalTrialProtocolEthicsCommitteeName"),
    (0x0012, 0x0020, "ClinicalTrialProtocolID"),
    (0x0012, 0x0021, "ClinicalTrialProtocolName"),
    (0x0012, 0x0072, "ClinicalTrialSeriesDescription"),
    (0x0012, 0x0071, "ClinicalTrialSeriesID"),
    (0x0012, 0x0030, "ClinicalTrialSiteID"),
    (0x0012, 0x0031, "ClinicalTrialSiteName"),
    (0x0012, 0x0010, "ClinicalTrialSponsorName"),
    (0x0012, 0x0040, "ClinicalTrialSubjectID"),
    (0x0012, 0x0042, "ClinicalTrialSubjectReadingID"),
    (0x0012, 0x0051, "ClinicalTrialTimePointDescription"),
    (0x0012, 0x0050, "ClinicalTrialTimePointID"),
    (0x0040, 0x0280, "CommentsOnThePerformedProcedureStep"),
    (0x0020, 0x9161, "ConcatenationUID"),
    (0x0040, 0x3001, "ConfidentialityConstraintOnPatientDataDescription"),
    (0x0008, 0x009D, "ConsultingPhysicianIdentificationSequence"),
    (0x0008, 0x009C, "ConsultingPhysicianName"),
    (0x0070, 0x0086, "ContentCreatorIdentificationCodeSequence"),
    (0x0070, 0x0084, "ContentCreatorName"),
    (0x0008, 0x0023, "ContentDate"),
    (0x0040, 0xA730, "ContentSequence"),
    (0x0008, 0x0033, "ContentTime"),
    (0x0008, 0x010D, "ContextGroupExtensionCreatorUID"),
    (0x0018, 0x0010, "ContrastBolusAgent"),
    (0x0018, 0xA003, "ContributionDescription"),
    (0x0010, 0x2150, "CountryOfResidence"),
    (0x0008, 0x9123, "CreatorVersionUID"),
    (0x0038, 0x0300, "CurrentPatientLocation"),
    (0x0008, 0x0025, "CurveDate"),
    (0x0008, 0x0035, "CurveTime"),
    (0x0040, 0xA07C, "CustodialOrganizationSequence"),
    (0xFFFC, 0xFFFC, "DataSetTrailingPadding"),
    (0x0018, 0x1200, "DateOfLastCalibration"),
    (0x0018, 0x700C, "DateOfLastDetectorCalibration"),
    (0x0008, 0x2111, "DerivationDescription"),
    (0x0018, 0x700A, "DetectorID"),
    (0x0018, 0x1000, "DeviceSerialNumber"),
    (0x0018, 0x1002, "DeviceUID"),
    (0x0400, 0x0100, "DigitalSignatureUID"),
    (0xFFFA, 0xFFFA, "DigitalSignaturesSequence"),
    (0x0020, 0x9164, "DimensionOrganizationUID"),
    (0x0038, 0x0040, "DischargeDiagnosisDescription"),
    (0x4008, 0x011A, "DistributionAddress"),
    (0x4008, 0x0119, "DistributionName"),
    (0x300A, 0x0013, "DoseReferenceUID"),
    (0x0018, 0x9517, "EndAcquisitionDateTime"),
    (0x0010, 0x2160, "EthnicGroup"),
    (0x0008, 0x0058, "FailedSOPInstanceUIDList"),
    (0x0070, 0x031A, "FiducialUID"),
    (0x0040, 0x2017, "FillerOrderNumberImagingServiceRequest"),
    (0x0018, 0x9074, "FrameAcquisitionDateTime"),
    (0x0020, 0x9158, "FrameComments"),
    (0x0020, 0x0052, "FrameOfReferenceUID"),
    (0x0018, 0x9151, "FrameReferenceDateTime"),
    (0x0018, 0x1008, "GantryID"),
    (0x0018, 0x1005, "GeneratorID"),
    (0x0070, 0x0001, "GraphicAnnotationSequence"),
    (0x0040, 0x4037, "HumanPerformerName"),
    (0x0040, 0x4036, "HumanPerformerOrganization"),
    (0x0088, 0x0200, "IconImageSequence"),
    (0x0008, 0x4000, "IdentifyingComments"),
    (0x0020, 0x4000, "ImageComments"),
    (0x0028, 0x4000, "ImagePresentationComments"),
    (0x0040, 0x2400, "ImagingServiceRequestComments"),
    (0x4008, 0x0300, "Impressions"),
    (0x0008, 0x0015, "InstanceCoercionDateTime"),
    (0x0008, 0x0012, "InstanceCreationDate"),
    (0x0008, 0x0013, "InstanceCreationTime"),
    (0x0008, 0x0014, "InstanceCreatorUID"),
    (0x0008, 0x0081, "InstitutionAddress"),
    (0x0008, 0x0082, "InstitutionCodeSequence"),
    (0x0008, 0x0080, "InstitutionName"),
    (0x0008, 0x1040, "InstitutionalDepartmentName"),
    (0x0010, 0x1050, "InsurancePlanIdentification"),
    (0x0040, 0x1011, "IntendedRecipientsOfResultsIdentificationSequence"),
    (0x4008, 0x0111, "InterpretationApproverSequence"),
    (0x4008, 0x010C, "InterpretationAuthor"),
    (0x4008, 0x0115, "InterpretationDiagnosisDescription"),
    (0x4008, 0x0202, "InterpretationIDIssuer"),
    (0x4008, 0x0102, "InterpretationRecorder"),
    (0x4008, 0x010B, "InterpretationText"),
    (0x4008, 0x010A, "InterpretationTranscriber"),
    (0x0008, 0x3010, "IrradiationEventUID"),
    (0x0038, 0x0011, "IssuerOfAdmissionID"),
    (0x0010, 0x0021, "IssuerOfPatientID"),
    (0x0038, 0x0061, "IssuerOfServiceEpisodeID"),
    (0x0028, 0x1214, "LargePaletteColorLookupTableUID"),
    (0x0010, 0x21D0, "LastMenstrualDate"),
    (0x0400, 0x0404, "MAC"),
    (0x0002, 0x0003, "MediaStorageSOPInstanceUID"),
    (0x0010, 0x2000, "MedicalAlerts"),
    (0x0010, 0x1090, "MedicalRecordLocator"),
    (0x0010, 0x1080, "MilitaryRank"),
    (0x0400, 0x0550, "ModifiedAttributesSequence"),
    (0x0020, 0x3406, "ModifiedImageDescription"),
    (0x0020, 0x3401, "ModifyingDeviceID"),
    (0x0020, 0x3404, "ModifyingDeviceManufacturer"),
    (0x0008, 0x1060, "NameOfPhysiciansReadingStudy"),
    (0x0040, 0x1010, "NamesOfIntendedRecipientsOfResults"),
    (0x0010, 0x2180, "Occupation"),
    (0x0008, 0x1072, "OperatorIdentificationSequence"),
    (0x0008, 0x1070, "OperatorsName"),
    (0x0040, 0x2010, "OrderCallbackPhoneNumber"),
    (0x0040, 0x2008, "OrderEnteredBy"),
    (0x0040, 0x2009, "OrderEntererLocation"),
    (0x0400, 0x0561, "OriginalAttributesSequence"),
    (0x0010, 0x1000, "OtherPatientIDs"),
    (0x0010, 0x1002, "OtherPatientIDsSequence"),
    (0x0010, 0x1001, "OtherPatientNames"),
    (0x0008, 0x0024, "OverlayDate"),
    (0x0008, 0x0034, "OverlayTime"),
    (0x0040, 0xA07A, "ParticipantSequence"),
    (0x0010, 0x1040, "PatientAddress"),
    (0x0010, 0x1010, "PatientAge"),
    (0x0010, 0x0030, "PatientBirthDate"),
    (0x0010, 0x1005, "PatientBirthName"),
    (0x0010, 0x0032, "PatientBirthTime"),
    (0x0010, 0x4000, "PatientComments"),
    (0x0010, 0x0020, "PatientID"),
    (0x0038, 0x0400, "PatientInstitutionResidence"),
    (0x0010, 0x0050, "PatientInsurancePlanCodeSequence"),
    (0x0010, 0x1060, "PatientMotherBirthName"),
    (0x0010, 0x0010, "PatientName"),
    (0x0010, 0x0101, "PatientPrimaryLanguageCodeSequence"),
    (0x0010, 0x0102, "PatientPrimaryLanguageModifierCodeSequence"),
    (0x0010, 0x21F0, "PatientReligiousPreference"),
    (0x0010, 0x0040, "PatientSex"),
    (0x0010, 0x2203, "PatientSexNeutered"),
    (0x0010, 0x1020, "PatientSize"),
    (0x0038, 0x0500, "PatientState"),
    (0x0010, 0x2154, "PatientTelephoneNumbers"),
    (0x0040, 0x1004, "PatientTransportArrangements"),
    (0x0010, 0x1030, "PatientWeight"),
    (0x0040, 0x0243, "PerformedLocation"),
    (0x0040, 0x0254, "PerformedProcedureStepDescription"),
    (0x0040, 0x0250, "PerformedProcedureStepEndDate"),
    (0x0040, 0x0251, "PerformedProcedureStepEndTime"),
    (0x0040, 0x0253, "PerformedProcedureStepID"),
    (0x0040, 0x0244, "PerformedProcedureStepStartDate"),
    (0x0040, 0x0245, "PerformedProcedureStepStartTime"),
    (0x0040, 0x0241, "PerformedStationAETitle"),
    (0x0040, 0x4030, "PerformedStationGeographicLocationCodeSequence"),
    (0x0040, 0x0242, "PerformedStationName"),
    (0x0040, 0x4028, "PerformedStationNameCodeSequence"),
    (0x0008, 0x1052, "PerformingPhysicianIdentificationSequence"),
    (0x0008, 0x1050, "PerformingPhysicianName"),
    (0x0040, 0x1102, "PersonAddress"),
    (0x0040, 0x1101, "PersonIdentificationCodeSequence"),
    (0x0040, 0xA123, "PersonName"),
    (0x0040, 0x1103, "PersonTelephoneNumbers"),
    (0x4008, 0x0114, "PhysicianApprovingInterpretation"),
    (0x0008, 0x1062, "PhysiciansReadingStudyIdentificationSequence"),
    (0x0008, 0x1048, "PhysiciansOfRecord"),
    (0x0008, 0x1049, "PhysiciansOfRecordIdentificationSequence"),
    (0x0040, 0x2016, "PlacerOrderNumberImagingServiceRequest"),
    (0x0018, 0x1004, "PlateID"),
    (0x0040, 0x0012, "PreMedication"),
    (0x0010, 0x21C0, "PregnancyStatus"),
    (0x0018, 0x1030, "ProtocolName"),
    (0x0018, 0x1078, "RadiopharmaceuticalStartDateTime"),
    (0x0018, 0x1072, "RadiopharmaceuticalStartTime"),
    (0x0018, 0x1079, "RadiopharmaceuticalStopDateTime"),
    (0x0018, 0x1073, "RadiopharmaceuticalStopTime"),
    (0x0040, 0x2001, "ReasonForTheImagingServiceRequest"),
    (0x0032, 0x1030, "ReasonForStudy"),
    (0x0400, 0x0402, "ReferencedDigitalSignatureSequence"),
    (0x3006, 0x0024, "ReferencedFrameOfReferenceUID"),
    (0x0040, 0x4023, "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID"),
    (0x0008, 0x1140, "ReferencedImageSequence"),
    (0x0038, 0x0004, "ReferencedPatientAliasSequence"),
    (0x0008, 0x1120, "ReferencedPatientSequence"),
    (0x0008, 0x1111, "ReferencedPerformedProcedureStepSequence"),
    (0x0400, 0x0403, "ReferencedSOPInstanceMACSequence"),
    (0x0008, 0x1155, "ReferencedSOPInstanceUID"),
    (0x0004, 0x1511, "ReferencedSOPInstanceUIDInFile"),
    (0x0008, 0x1110, "ReferencedStudySequence"),
    (0x0008, 0x0092, "ReferringPhysicianAddress"),
    (0x0008, 0x0096, "ReferringPhysicianIdentificationSequence"),
    (0x0008, 0x0090, "ReferringPhysicianName"),
    (0x0008, 0x0094, "ReferringPhysicianTelephoneNumbers"),
    (0x0010, 0x2152, "RegionOfResidence"),
    (0x3006, 0x00C2, "RelatedFrameOfReferenceUID"),
    (0x0040, 0x0275, "RequestAttributesSequence"),
    (0x0032, 0x1070, "RequestedContrastAgent"),
    (0x0040, 0x1400, "RequestedProcedureComments"),
    (0x0032, 0x1060, "RequestedProcedureDescription"),
    (0x0040, 0x1001, "RequestedProcedureID"),
    (0x0040, 0x1005, "RequestedProcedureLocation"),
    (0x0000, 0x1001, "RequestedSOPInstanceUID"),
    (0x0032, 0x1032, "RequestingPhysician"),
    (0x0032, 0x1033, "RequestingService"),
    (0x0010, 0x2299, "ResponsibleOrganization"),
    (0x0010, 0x2297, "ResponsiblePerson"),
    (0x4008, 0x4000, "ResultsComments"),
    (0x4008, 0x0118, "ResultsDistributionListSequence"),
    (0x4008, 0x0042, "ResultsIDIssuer"),
    (0x300E, 0x0008, "ReviewerName"),
    (0x0040, 0x4034, "ScheduledHumanPerformersSequence"),
    (0x0038, 0x001E, "ScheduledPatientInstitutionResidence"),
    (0x0040, 0x000B, "ScheduledPerformingPhysicianIdentificationSequence"),
    (0x0040, 0x0006, "ScheduledPerformingPhysicianName"),
    (0x0040, 0x0004, "ScheduledProcedureStepEndDate"),
    (0x0040, 0x0005, "ScheduledProcedureStepEndTime"),
    (0x0040, 0x0007, "ScheduledProcedureStepDescription"),
    (0x0040, 0x0011, "ScheduledProcedureStepLocation"),
    (0x0040, 0x0002, "ScheduledProcedureStepStartDate"),
    (0x0040, 0x0003, "ScheduledProcedureStepStartTime"),
    (0x0040, 0x0001, "ScheduledStationAETitle"),
    (0x0040, 0x4027, "ScheduledStationGeographicLocationCodeSequence"),
    (0x0040, 0x0010, "ScheduledStationName"),
    (0x0040, 0x4025, "ScheduledStationNameCodeSequence"),
    (0x0032, 0x1020, "ScheduledStudyLocation"),
    (0x0032, 0x1021, "ScheduledStudyLocationAETitle"),
    (0x0008, 0x0021, "SeriesDate"),
    (0x0008, 0x103E, "SeriesDescription"),
    (0x0020, 0x000E, "SeriesInstanceUID"),
    (0x0008, 0x0031, "SeriesTime"),
    (0x0038, 0x0062, "ServiceEpisodeDescription"),
    (0x0038, 0x0060, "ServiceEpisodeID"),
    (0x0010, 0x21A0, "SmokingStatus"),
    (0x0008, 0x0018, "SOPInstanceUID"),
    (0x0008, 0x2112, "SourceImageSequence"),
    (0x0038, 0x0050, "SpecialNeeds"),
    (0x0018, 0x9516, "StartAcquisitionDateTime"),
    (0x0008, 0x1010, "StationName"),
    (0x0088, 0x0140, "StorageMediaFileSetUID"),
    (0x0032, 0x4000, "StudyComments"),
    (0x0008, 0x0020, "StudyDate"),
    (0x0008, 0x1030, "StudyDescription"),
    (0x0020, 0x0010, "StudyID"),
    (0x0032, 0x0012, "StudyIDIssuer"),
    (0x0020, 0x000D, "StudyInstanceUID"),
    (0x0008, 0x0030, "StudyTime"),
    (0x0020, 0x0200, "SynchronizationFrameOfReferenceUID"),
    (0x0018, 0x2042, "TargetUID"),
    (0x0040, 0xA354, "TelephoneNumberTrial"),
    (0x0040, 0xDB0D, "TemplateExtensionCreatorUID"),
    (0x0040, 0xDB0C, "TemplateExtensionOrganizationUID"),
    (0x4000, 0x4000, "TextComments"),
    (0x2030, 0x0020, "TextString"),
    (0x0018, 0x1201, "TimeOfLastCalibration"),
    (0x0008, 0x0201, "TimezoneOffsetFromUTC"),
    (0x0088, 0x0910, "TopicAuthor"),
    (0x0088, 0x0912, "TopicKeywords"),
    (0x0088, 0x0906, "TopicSubject"),
    (0x0088, 0x0904, "TopicTitle"),
    (0x0008, 0x1195, "TransactionUID"),
    (0x0040, 0xA124, "UID"),
    (0x0040, 0xA088, "VerifyingObserverIdentificationCodeSequence"),
    (0x0040, 0xA075, "VerifyingObserverName"),
    (0x0040, 0xA073, "VerifyingObserverSequence"),
    (0x0038, 0x4000, "VisitComments"),
)
# table rows of repeating groups: (group mask, group value, element) - 50xx,xxxx is every element of the group
REPEATING_GROUPS: tuple[tuple[int, int, int | None], ...] = (
    (0xFF00, 0x5000, None),  # Curve Data (50xx,xxxx)
    (0xFF00, 0x6000, 0x3000),  # Overlay Data (60xx,3000)
    (0xFF00, 0x6000, 0x4000),  # Overlay Comments (60xx,4000)
)
PROFILE_TAGS: frozenset[int] = frozenset((group << 16) | element for group, element, _ in CONFIDENTIALITY_PROFILE)
KEEP, REPLACE, REMOVE = "keep", "replace", "remove"
PRIVATE_SEQUENCE_NAMES = frozenset({"Private tag data", "Private Creator"})
UID_TOKEN = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){3,}(?![0-9.])")  # a UID in free text: 4 or more components


def is_profile_tag(tag: int) -> bool:
    """True for an attribute of table E.1-1 (repeating groups included; private tags are not: see
    :func:`is_private_tag`)."""
    if tag in PROFILE_TAGS:
        return True
    group, element = tag >> 16, tag & 0xFFFF
    return any(group & mask == value and (wanted is None or element == wanted)
               for mask, value, wanted in REPEATING_GROUPS)


def is_private_tag(tag: int) -> bool:
    """True for a private element (odd group)."""
    return bool(tag >> 16 & 1)


@cache
def _profile_sequence_names() -> frozenset[str]:
    return frozenset(tag_name((g << 16) | e) for g, e, _ in CONFIDENTIALITY_PROFILE
                     if dictionary_vr((g << 16) | e) == "SQ")


@cache
def column_action(column: str) -> str:
    """What pseudonymise / drop do with a metadata column (its name as :func:`~voxelpipe.dicom.flatten.column_name`
    builds it): ``keep``, ``replace`` (pseudonymise; drop removes it) or ``remove`` (private: removed by both).
    Columns that are not elements (``path``, ``series_key``) are kept."""
    parts = split_column(column)
    if parts is None:
        return KEEP
    sequences, tag = parts
    if is_private_tag(tag) or any(name in PRIVATE_SEQUENCE_NAMES for name in sequences):
        return REMOVE
    if is_profile_tag(tag) or any(name in _profile_sequence_names() for name in sequences):
        return REPLACE
    return KEEP


def pseudonymise_value(text: str, secret: str, uid: bool) -> str:
    """The pseudonym of one cell: every value of a multi-valued cell (``\\``-separated) and of a
    ``DUPLICATE TAGS IN DICOM:`` cell (``/``-separated) is replaced on its own; empty values stay empty. ``uid``:
    values are UIDs (pseudonyms ``2.25.<number>``), else text pseudonyms (32 hex digits)."""
    if text is None or text == "":
        return text
    if text.startswith(DUPLICATE_PREFIX):
        parts = text[len(DUPLICATE_PREFIX):].split("/")
        return DUPLICATE_PREFIX + "/".join(pseudonymise_value(part, secret, uid) for part in parts)
    make = uid_pseudonym if uid else text_pseudonym
    return "\\".join(make(value, secret) if value else value for value in str(text).split("\\"))


@cache
def _column_is_uid(column: str) -> bool:
    parts = split_column(column)
    return parts is not None and dictionary_vr(parts[1]) == "UI"


def deidentify_row(row: dict[str, str], phi: Phi, secret: str | None) -> dict[str, str]:
    """A flattened metadata row with ``phi`` applied (``secret``: the key of pseudonyms; needed for
    ``pseudonymise``)."""
    if phi == Phi.KEEP:
        return row
    result = {}
    for column, text in row.items():
        action = column_action(column)
        if action == KEEP:
            result[column] = text
        elif action == REPLACE and phi == Phi.PSEUDONYMISE:
            result[column] = pseudonymise_value(text, secret, _column_is_uid(column))
    return result


# kinds of the fields voxelpipe's own tables and attributes hold from the profile
FIELD_UID, FIELD_UIDS, FIELD_TEXT = "uid", "uid_list", "text"


def deidentify_fields(row: Mapping, kinds: Mapping[str, str], phi: Phi, secret: str | None) -> dict:
    """``row`` (a table row, volume attributes) with ``phi`` applied to the fields named in ``kinds`` (field ->
    ``uid``, ``uid_list`` (``;``-separated UIDs) or ``text``): pseudonymised, or left out for ``drop``."""
    if phi == Phi.KEEP:
        return dict(row)
    result = {}
    for name, value in row.items():
        kind = kinds.get(name)
        if kind is None:
            result[name] = value
        elif phi == Phi.PSEUDONYMISE:
            if value is None or value == "":
                result[name] = value
            elif kind == FIELD_UIDS:
                result[name] = ";".join(uid_pseudonym(v, secret) if v else v for v in str(value).split(";"))
            else:
                result[name] = pseudonymise_value(str(value), secret, kind == FIELD_UID)
    return result


def kept_columns(columns: Iterable[str], kinds: Mapping[str, str], phi: Phi) -> list[str]:
    """The columns of a table that ``phi`` keeps (``drop`` leaves out the fields of ``kinds``)."""
    return [c for c in columns if phi != Phi.DROP or c not in kinds]


def scrub_uids(text: str, phi: Phi, secret: str | None) -> str:
    """Free text (a reason) with every UID in it (a number with 4 or more dot-separated components) replaced by
    its pseudonym (``pseudonymise``) or by ``<UID>`` (``drop``)."""
    if phi == Phi.KEEP or not text:
        return text
    if phi == Phi.PSEUDONYMISE:
        return UID_TOKEN.sub(lambda m: uid_pseudonym(m.group(0), secret), text)
    return UID_TOKEN.sub("<UID>", text)
