"""PS3.15 Annex E de-identification: headers rewritten from the table, pixel data streamed as is."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Final

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import pack_bits
from pydicom.uid import ExplicitVRLittleEndian

from edge_forwarder.deid.codec import (
    ITEM_DELIMITER,
    ITEM_START_UNDEFINED,
    SEQUENCE_DELIMITER,
    TEXT_VRS,
    UNDEFINED_LENGTH,
    CodecError,
    Element,
    encode_element,
    iter_elements,
    iter_items,
    read_file_meta,
    sequence_header,
)
from edge_forwarder.deid.table import TABLE_EDITION, Action, resolve_actions
from edge_forwarder.deid.vocabulary import REPLACEMENT, vocabulary
from edge_forwarder.identity import StudyIdentity
from imaging_ai.dicom_policy import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    NEEDS_FULL_DECODE,
    REQUIRED_ATTRIBUTES,
    BurnedInRisk,
    burned_in_risk,
)
from imaging_ai.errors import PipelineError

_ITEM_TAG: Final = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
_SEQ_END_TAG: Final = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD): an empty undefined-length sequence
IMPLEMENTATION_CLASS_UID: Final = "1.2.826.0.1.3680043.10.1445.1"  # this project's root, see README
IMPLEMENTATION_VERSION_NAME: Final = b"IMAGING_AI_01"
# Tags read while rewriting (originals for the crosswalk, and context for the rules).
T_SPECIFIC_CHARSET = 0x00080005
T_SOP_CLASS = 0x00080016
T_SOP_INSTANCE = 0x00080018
T_STUDY_DATE = 0x00080020
T_STUDY_TIME = 0x00080030
T_ACCESSION = 0x00080050
T_MODALITY = 0x00080060
T_INSTITUTION = 0x00080080
T_REFERRING = 0x00080090
T_PERFORMING = 0x00081050
T_OPERATORS = 0x00081070
T_PATIENT_NAME = 0x00100010
T_PATIENT_ID = 0x00100020
T_BIRTH_DATE = 0x00100030
T_SEX = 0x00100040
T_STUDY_UID = 0x0020000D
T_SERIES_UID = 0x0020000E
T_FRAME_OF_REFERENCE = 0x00200052
T_BURNED_IN = 0x00280301
T_TRANSFER_SYNTAX = 0x00020010
_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEID_METHOD = 0x00120063
_DEID_METHOD_CODES = 0x00120064
_LONGITUDINAL_MODIFIED = 0x00280303
_ADDED_TAGS = frozenset(
    {_PATIENT_IDENTITY_REMOVED, _DEID_METHOD, _DEID_METHOD_CODES, _LONGITUDINAL_MODIFIED}
)
# Identifiers the crosswalk keeps (on the edge only) besides the UIDs.
_PRESCAN_TAGS = frozenset(
    {
        T_ACCESSION,
        T_INSTITUTION,
        T_REFERRING,
        T_PERFORMING,
        T_OPERATORS,
        T_PATIENT_NAME,
        T_PATIENT_ID,
        T_BIRTH_DATE,
    }
)
_ORIGINAL_TAGS = _PRESCAN_TAGS | {
    T_SPECIFIC_CHARSET,
    T_SOP_CLASS,
    T_SOP_INSTANCE,
    T_STUDY_DATE,
    T_STUDY_TIME,
    T_MODALITY,
    T_SEX,
    T_STUDY_UID,
    T_SERIES_UID,
    T_FRAME_OF_REFERENCE,
    T_BURNED_IN,
}
_REQUIRED = tuple((int(tag_for_keyword(k) or 0), k) for k in REQUIRED_ATTRIBUTES)

_DUMMY_TEXT: dict[bytes, bytes] = {
    b"AE": b"ANONYMOUS",
    b"AS": b"000Y",
    b"CS": b"ANONYMIZED",
    b"DA": b"19000101",
    b"DT": b"19000101000000",
    b"TM": b"000000",
    b"DS": b"0",
    b"IS": b"0",
    b"UR": b"",
}
_BINARY_WIDTH = {
    b"US": 2,
    b"SS": 2,
    b"UL": 4,
    b"SL": 4,
    b"FL": 4,
    b"FD": 8,
    b"AT": 4,
    b"SV": 8,
    b"UV": 8,
}
# VRs whose value may hold several values separated by a backslash (LT, ST, UT may not).
_MULTI_VALUED_TEXT = frozenset({b"AE", b"CS", b"LO", b"PN", b"SH", b"UC"})


class QuarantineReason(StrEnum):
    """Why an instance is held back on the edge instead of being de-identified and sent."""

    BURNED_IN_ANNOTATION = "burned_in_annotation"
    BURNED_IN_RISK_SOP_CLASS = "burned_in_risk_sop_class"
    MISSING_ATTRIBUTE = "missing_attribute"
    UNDECODABLE = "undecodable"


class DeidError(PipelineError):
    """An instance cannot be de-identified safely; it is quarantined with `reason`.

    The message names attributes only, never a value.
    """

    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DeidOptions:
    """PS3.15 options; the defaults are the safe profile the forwarder ships."""

    retain_longitudinal_temporal_modified_dates: bool = True  # consistent per-patient shift
    retain_patient_characteristics: bool = True
    retain_device_identity: bool = False
    # Opt-in: without it the Basic Profile removes (or dummies) every descriptor, comment,
    # history, protocol and reason attribute; with it they are cleaned by the allow-list
    # vocabulary (edge_forwarder/deid/vocabulary.py), never kept as sent.
    clean_descriptors: bool = False
    retain_safe_private: bool = False
    safe_private_allow_list: tuple[tuple[str, int], ...] = ()  # (private creator, element)
    retain_institution_identity: bool = False
    quarantine_burned_in: bool = True
    # SOP classes a site has checked for burned-in text and lets through (e.g. its own SC).
    allowed_burned_in_risk_sop_classes: tuple[str, ...] = ()

    def enabled_option_keys(self) -> frozenset[str]:
        keys = set()
        if self.retain_longitudinal_temporal_modified_dates:
            keys.add("mod")
        if self.retain_patient_characteristics:
            keys.add("pat")
        if self.retain_device_identity:
            keys.add("dev")
        if self.clean_descriptors:
            keys.add("desc")
        if self.retain_institution_identity:
            keys.add("inst")
        return frozenset(keys)

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes (DCM) for the profile and every option applied."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.clean_descriptors:
            codes.append(("113105", "Clean Descriptors Option"))
        if self.retain_longitudinal_temporal_modified_dates:
            codes.append(
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
            )
        if self.retain_patient_characteristics:
            codes.append(("113108", "Retain Patient Characteristics Option"))
        if self.retain_device_identity:
            codes.append(("113109", "Retain Device Identity Option"))
        if self.retain_safe_private:
            codes.append(("113111", "Retain Safe Private Option"))
        if self.retain_institution_identity:
            codes.append(("113112", "Retain Institution Identity Option"))
        return codes

    def option_names(self) -> list[str]:
        return [meaning for code, meaning in self.method_codes() if code != "113100"]


@dataclass(frozen=True)
class PseudoIdentifiers:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    frame_of_reference_uid: str | None
    patient_id: str
    patient_name: str
    date_shift_days: int
    study_date: str


@dataclass(frozen=True)
class DeidResult:
    dataset_bytes: bytes  # the de-identified DICOM Part 10 file
    identity: StudyIdentity  # what the crosswalk keeps to put this instance back (PHI)
    pseudo: PseudoIdentifiers
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str = ExplicitVRLittleEndian
    table_edition: str = TABLE_EDITION
    method_codes: tuple[str, ...] = ()


@dataclass
class _Context:
    """Per-instance state of one rewrite."""

    implicit: bool
    encodings: list[str]
    shift_days: int
    patient_id: str = ""
    originals: dict[int, bytes] = field(default_factory=dict)


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


class Deidentifier:
    """De-identify DICOM instances under one site secret, deterministically.

    Parameters
    ----------
    site_secret
        Key of every HMAC pseudonym: the same input gives the same pseudonym across runs
        and machines of one site, and pseudonyms cannot be reversed without it.
    options
        The PS3.15 options applied; see `DeidOptions`.
    """

    def __init__(self, site_secret: bytes, options: DeidOptions = DeidOptions()) -> None:
        if len(site_secret) < 16:
            raise PipelineError("site secret must be at least 16 bytes")
        self._secret = site_secret
        self.options = options
        self._actions = resolve_actions(options.enabled_option_keys())
        self._safe_private = {
            (c.strip().upper(), e & 0xFF) for c, e in options.safe_private_allow_list
        }
        self._safe_creators = {c for c, _ in self._safe_private}
        self._uid_cache: dict[str, str] = {}
        self._codes = options.method_codes()
        self._method_suffix = self._encode_method_elements()

    # ---- pseudonyms ---------------------------------------------------------------------

    def _mac(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(
            self._secret, purpose + b"\x00" + value.encode("utf-8"), hashlib.sha256
        ).digest()

    def pseudo_uid(self, uid: str) -> str:
        """A keyed HMAC of the UID as a "2.25." UUID-derived UID (PS3.5 B.2), at most 44 chars."""
        cached = self._uid_cache.get(uid)
        if cached is None:
            cached = "2.25." + str(int.from_bytes(self._mac(b"uid", uid)[:16], "big"))
            if len(self._uid_cache) > 100_000:
                self._uid_cache.clear()
            self._uid_cache[uid] = cached
        return cached

    def pseudo_patient_id(self, patient_id: str) -> str:
        digest = base64.b32encode(self._mac(b"patient", patient_id)[:10]).decode("ascii")
        return f"ANON-{digest}"

    def pseudo_patient_name(self, patient_id: str) -> str:
        """The patient pseudonym as a family name with an empty given name ("ANON-...^").

        A PN value without a caret reads as a free-text string put in the wrong place
        (highdicom warns); the trailing caret makes it an explicit family^given name.
        """
        return self.pseudo_patient_id(patient_id) + "^"

    def date_shift_days(self, patient_id: str) -> int:
        """A per-patient shift of 1 to 3650 days into the past, the same for every study."""
        return -(1 + int.from_bytes(self._mac(b"date", patient_id)[:4], "big") % 3650)

    # ---- entry points -------------------------------------------------------------------

    def deidentify(self, ds: Dataset) -> DeidResult:
        """De-identify a decoded data set; the input is not changed."""
        buffer = io.BytesIO()
        meta = FileMetaDataset(getattr(ds, "file_meta", FileMetaDataset()))
        if "TransferSyntaxUID" not in meta:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        original_meta = getattr(ds, "file_meta", None)
        try:
            ds.file_meta = meta
            ds.save_as(buffer, enforce_file_format=True)
        except Exception as exc:
            raise DeidError(QuarantineReason.UNDECODABLE, "data set cannot be encoded") from exc
        finally:
            if original_meta is None:
                del ds.file_meta
            else:
                ds.file_meta = original_meta
        return self.deidentify_bytes(buffer.getvalue())

    def deidentify_bytes(self, part10: bytes) -> DeidResult:
        """The fast path: walk and rewrite the header, copy the pixel data bytes untouched."""
        try:
            return self._deidentify_bytes(part10)
        except DeidError:
            raise
        except (CodecError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise DeidError(QuarantineReason.UNDECODABLE, type(exc).__name__) from exc

    # ---- the rewrite --------------------------------------------------------------------

    def _deidentify_bytes(self, part10: bytes) -> DeidResult:
        buf = memoryview(part10)
        if len(buf) < 132 + 12 or bytes(buf[128:132]) != b"DICM":
            return self._deidentify_bytes(_reencode(part10))
        meta, pos = read_file_meta(buf)
        transfer_syntax = _text(meta.get(T_TRANSFER_SYNTAX, b""))
        if not transfer_syntax:
            raise DeidError(QuarantineReason.UNDECODABLE, "file meta has no TransferSyntaxUID")
        if transfer_syntax in NEEDS_FULL_DECODE:
            # Deflated and big endian data sets are re-encoded losslessly as explicit little
            # endian; every other syntax (compressed ones included) passes through as sent.
            return self._deidentify_bytes(_reencode(part10))
        implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN

        prescan = _prescan(buf, pos, implicit)
        patient_id = _text(prescan.get(T_PATIENT_ID, b""))
        ctx = _Context(
            implicit=implicit,
            encodings=_encodings(prescan.get(T_SPECIFIC_CHARSET, b"")),
            shift_days=self.date_shift_days(patient_id),
            patient_id=patient_id,
        )
        body = self._rewrite(buf, pos, len(buf), ctx, top_level=True)
        originals = ctx.originals
        for tag, keyword in _REQUIRED:
            if not _text(originals.get(tag, b"")):
                raise DeidError(QuarantineReason.MISSING_ATTRIBUTE, keyword)
        sop_class = _text(originals[T_SOP_CLASS])
        self._check_burned_in(sop_class, _text(originals.get(T_BURNED_IN, b"")))

        study_uid = _text(originals[T_STUDY_UID])
        series_uid = _text(originals[T_SERIES_UID])
        sop_uid = _text(originals[T_SOP_INSTANCE])
        frame_uid = _text(originals.get(T_FRAME_OF_REFERENCE, b""))
        study_date = _text(originals.get(T_STUDY_DATE, b""))
        pseudo = PseudoIdentifiers(
            study_instance_uid=self.pseudo_uid(study_uid),
            series_instance_uid=self.pseudo_uid(series_uid),
            sop_instance_uid=self.pseudo_uid(sop_uid),
            frame_of_reference_uid=self.pseudo_uid(frame_uid) if frame_uid else None,
            patient_id=self.pseudo_patient_id(patient_id),
            patient_name=self.pseudo_patient_name(patient_id),
            date_shift_days=ctx.shift_days,
            study_date=_shift_dates(study_date.encode(), ctx.shift_days).decode()
            if self.options.retain_longitudinal_temporal_modified_dates
            else "",
        )
        identity = StudyIdentity(
            pseudo_study_uid=pseudo.study_instance_uid,
            study_instance_uid=study_uid,
            pseudo_patient_id=pseudo.patient_id,
            patient_id=patient_id,
            patient_name=_decode_person_name(originals.get(T_PATIENT_NAME, b""), ctx.encodings),
            patient_birth_date=_text(originals.get(T_BIRTH_DATE, b"")),
            patient_sex=_text(originals.get(T_SEX, b"")),
            accession_number=_text(originals.get(T_ACCESSION, b"")),
            study_date=study_date,
            study_time=_text(originals.get(T_STUDY_TIME, b"")),
            date_shift_days=ctx.shift_days,
            series={pseudo.series_instance_uid: series_uid},
            frames_of_reference={pseudo.frame_of_reference_uid: frame_uid}
            if pseudo.frame_of_reference_uid
            else {},
            instances={pseudo.sop_instance_uid: sop_uid},
        )
        header = self._file_meta(meta, sop_class, pseudo.sop_instance_uid, transfer_syntax)
        return DeidResult(
            dataset_bytes=header + b"".join(body),
            identity=identity,
            pseudo=pseudo,
            sop_class_uid=sop_class,
            modality=_text(originals.get(T_MODALITY, b"")),
            transfer_syntax_uid=transfer_syntax,
            method_codes=tuple(code for code, _ in self._codes),
        )

    def _check_burned_in(self, sop_class: str, burned_in: str) -> None:
        if not self.options.quarantine_burned_in:
            return
        allowed = frozenset(self.options.allowed_burned_in_risk_sop_classes)
        risk = burned_in_risk(sop_class, burned_in, allowed)
        if risk is BurnedInRisk.ANNOTATION:
            raise DeidError(QuarantineReason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES")
        if risk is BurnedInRisk.RISK_SOP_CLASS:
            raise DeidError(QuarantineReason.BURNED_IN_RISK_SOP_CLASS, "SOPClassUID")

    def _rewrite(
        self, buf: memoryview, start: int, end: int, ctx: _Context, top_level: bool
    ) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        # Private creators are scoped to one data set: an item's block reservations must not
        # decide what the enclosing data set keeps.
        creators: dict[int, str] = {}
        for element in iter_elements(buf, start, end, ctx.implicit):
            tag = element.tag
            group = tag >> 16
            if top_level:
                if tag in _ORIGINAL_TAGS:
                    ctx.originals[tag] = bytes(buf[element.value_start : element.end])
                if tag in _ADDED_TAGS:
                    continue
            if group & 1:
                piece: bytes | memoryview | None = self._private(buf, element, ctx, creators)
            elif group in (0x0000, 0x0002, 0xFFFC, 0xFFFE) or tag & 0xFFFF == 0:
                # Command and file meta elements have no place in a data set body (whatever
                # they say, e.g. a source AE title, stays behind); trailing padding and stray
                # items carry no attribute, only bytes; group lengths are retired.
                piece = None
            elif 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                piece = None  # curves and overlays may carry drawn-in identifiers
            else:
                piece = self._apply(buf, element, ctx)
            if piece is not None:
                out.append(piece)
        if top_level:
            out = self._insert_method_elements(out, ctx.implicit)
        return out

    def _insert_method_elements(
        self, pieces: list[bytes | memoryview], implicit: bool
    ) -> list[bytes | memoryview]:
        """Put PatientIdentityRemoved & co. among the pieces in tag order."""
        additions = self._method_suffix[implicit]
        merged: list[bytes | memoryview] = []
        pending = sorted(additions.items())
        for piece in pieces:
            tag = _piece_tag(piece)
            while pending and pending[0][0] < tag:
                merged.append(pending.pop(0)[1])
            merged.append(piece)
        merged.extend(piece for _, piece in pending)
        return merged

    def _encode_method_elements(self) -> dict[bool, dict[int, bytes]]:
        encoded: dict[bool, dict[int, bytes]] = {}
        method = "PS3.15 E.1-1 " + TABLE_EDITION + " Basic Profile"
        if self.options.option_names():
            method += " + " + ", ".join(self.options.option_names())
        for implicit in (False, True):
            parts = {
                _PATIENT_IDENTITY_REMOVED: encode_element(
                    _PATIENT_IDENTITY_REMOVED, b"CS", b"YES", implicit
                ),
                _DEID_METHOD: encode_element(
                    _DEID_METHOD, b"LO", method[:64].encode("ascii"), implicit
                ),
            }
            items = b""
            for code, meaning in self._codes:
                item = (
                    encode_element(0x00080100, b"SH", code.encode(), implicit)
                    + encode_element(0x00080102, b"SH", b"DCM", implicit)
                    + encode_element(0x00080104, b"LO", meaning[:64].encode(), implicit)
                )
                items += ITEM_START_UNDEFINED + item + ITEM_DELIMITER
            parts[_DEID_METHOD_CODES] = (
                sequence_header(_DEID_METHOD_CODES, b"SQ", implicit) + items + SEQUENCE_DELIMITER
            )
            if self.options.retain_longitudinal_temporal_modified_dates:
                parts[_LONGITUDINAL_MODIFIED] = encode_element(
                    _LONGITUDINAL_MODIFIED, b"CS", b"MODIFIED", implicit
                )
            encoded[implicit] = parts
        return encoded

    def _private(
        self, buf: memoryview, element: Element, ctx: _Context, creators: dict[int, str]
    ) -> bytes | memoryview | None:
        if not self.options.retain_safe_private or not self._safe_private:
            return None
        tag = element.tag
        low = tag & 0xFFFF
        if 0x0010 <= low <= 0x00FF:
            creator = _text(bytes(buf[element.value_start : element.end])).strip().upper()
            creators[tag] = creator
            return buf[element.start : element.end] if creator in self._safe_creators else None
        if low < 0x1000:
            return None
        creator = creators.get((tag & 0xFFFF0000) | (low >> 8), "")
        if (creator, low & 0xFF) not in self._safe_private:
            return None
        if element.vr == b"SQ" or _may_be_sequence(buf, element):
            # A retained private sequence is walked like any other: the allow-list vouches
            # for the attribute, not for whatever a vendor nested inside it.
            return self._sequence(buf, element, ctx, element.vr or b"UN")
        return buf[element.start : element.end]

    def _apply(self, buf: memoryview, element: Element, ctx: _Context) -> bytes | memoryview | None:
        tag = element.tag
        action = self._actions.get(tag)
        if tag in (T_PATIENT_ID, T_PATIENT_NAME):
            # Both carry the patient pseudonym so a PACS lists the de-identified patient once.
            text = _text(bytes(buf[element.value_start : element.end]))
            vr = b"LO" if tag == T_PATIENT_ID else b"PN"
            if not text:
                pseudo = b""
            elif tag == T_PATIENT_NAME:
                pseudo = self.pseudo_patient_name(ctx.patient_id).encode("ascii")
            else:
                pseudo = self.pseudo_patient_id(text).encode("ascii")
            return encode_element(tag, vr, pseudo, ctx.implicit)
        declared = element.vr if element.vr is not None else _dictionary_vr(tag)
        # A value of unknown representation (explicit UN, or a tag the dictionary does not
        # know in an implicit data set) is never copied as sent: it is read as the dictionary
        # says, or as a sequence (PS3.5 6.2.2), or dropped.
        hidden = declared is None or declared == b"UN"
        vr = (_dictionary_vr(tag) if hidden else declared) or b"UN"
        if not hidden and vr != b"SQ" and _dictionary_vr(tag) == b"SQ":
            return None  # a sequence declared as OB, LT...: its items cannot be walked safely
        if hidden and vr == b"UN":
            if action is Action.REMOVE or not _may_be_sequence(buf, element):
                return None
            return self._sequence(buf, element, ctx, b"UN")
        # How a sequence is written back: sent as UN, its items stay implicit VR inside UN.
        sequence_vr = b"UN" if element.vr == b"UN" else b"SQ"
        if action is None or action is Action.KEEP:
            if vr == b"SQ" or (element.vr == b"UN" and element.length == UNDEFINED_LENGTH):
                return self._sequence(buf, element, ctx, sequence_vr)
            if hidden:
                return _encode_or_drop(tag, vr, bytes(buf[element.value_start : element.end]), ctx)
            return buf[element.start : element.end]
        if action is Action.REMOVE:
            return None
        if vr == b"SQ":
            if action in (Action.CLEAN, Action.REMAP_UID):
                return self._sequence(buf, element, ctx, sequence_vr)
            # Z, and D: an empty sequence; a dummy item could only repeat attribute names.
            return sequence_header(tag, sequence_vr, ctx.implicit, 0)
        value = bytes(buf[element.value_start : element.end])
        if action is Action.EMPTY:
            return encode_element(tag, vr, b"", ctx.implicit)
        if action is Action.REMAP_UID or (action is Action.DUMMY and vr == b"UI"):
            return _encode_or_drop(tag, vr, self._remap_uids(value), ctx)
        if action is Action.DUMMY:
            return encode_element(tag, vr, _dummy(vr), ctx.implicit)
        return self._clean(tag, vr, value, ctx)

    def _clean(self, tag: int, vr: bytes, value: bytes, ctx: _Context) -> bytes | None:
        if vr == b"DA" or vr == b"DT":
            return encode_element(tag, vr, _shift_dates(value, ctx.shift_days, vr), ctx.implicit)
        if vr == b"TM":
            return encode_element(tag, vr, value, ctx.implicit)
        if vr == b"AE":
            return encode_element(tag, vr, _dummy(vr), ctx.implicit)
        if vr in TEXT_VRS:
            cleaned = _clean_descriptor(value, vr, ctx.encodings)
            return _encode_or_drop(tag, vr, cleaned, ctx)
        return encode_element(tag, vr, _dummy(vr), ctx.implicit)

    def _remap_uids(self, value: bytes) -> bytes:
        uids = [_text(part) for part in value.split(b"\\")]
        return "\\".join(self.pseudo_uid(uid) if uid else "" for uid in uids).encode("ascii")

    def _sequence(
        self, buf: memoryview, element: Element, ctx: _Context, vr: bytes
    ) -> bytes | None:
        """Rewrite every item; a UN value that does not parse as items is dropped."""
        # UN holds an implicit VR little endian sequence whatever the data set's syntax.
        implicit_items = ctx.implicit or element.vr == b"UN"
        item_ctx = (
            ctx
            if implicit_items == ctx.implicit
            else _Context(
                implicit=True,
                encodings=ctx.encodings,
                shift_days=ctx.shift_days,
                patient_id=ctx.patient_id,
            )
        )
        parts = [sequence_header(element.tag, vr, ctx.implicit)]
        try:
            for start, end in iter_items(buf, element, implicit_items):
                parts.append(ITEM_START_UNDEFINED)
                parts.extend(bytes(p) for p in self._rewrite(buf, start, end, item_ctx, False))
                parts.append(ITEM_DELIMITER)
        except CodecError:
            if vr == b"UN":
                return None  # it was not a sequence after all, and cannot be read as anything
            raise
        parts.append(SEQUENCE_DELIMITER)
        return b"".join(parts)

    def _file_meta(
        self, meta: dict[int, bytes], sop_class: str, pseudo_instance: str, transfer_syntax: str
    ) -> bytes:
        elements = (
            encode_element(0x00020001, b"OB", b"\x00\x01", False)
            + encode_element(0x00020002, b"UI", sop_class.encode("ascii"), False)
            + encode_element(0x00020003, b"UI", pseudo_instance.encode("ascii"), False)
            + encode_element(0x00020010, b"UI", transfer_syntax.encode("ascii"), False)
            + encode_element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), False)
            + encode_element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME, False)
        )
        length = encode_element(0x00020000, b"UL", len(elements).to_bytes(4, "little"), False)
        return b"\x00" * 128 + b"DICM" + length + elements


def _piece_tag(piece: bytes | memoryview) -> int:
    group = piece[0] | (piece[1] << 8)
    element = piece[2] | (piece[3] << 8)
    return (group << 16) | element


def _prescan(buf: memoryview, pos: int, implicit: bool) -> dict[int, bytes]:
    """Read what the rewrite needs first: the patient ID (it keys the date shift) and the
    character set (Clean Descriptors decodes with it); both precede group 0x0011."""
    found: dict[int, bytes] = {}
    for element in iter_elements(buf, pos, len(buf), implicit):
        if element.tag > T_PATIENT_ID:
            break
        if element.tag in (T_PATIENT_ID, T_SPECIFIC_CHARSET):
            found[element.tag] = bytes(buf[element.value_start : element.end])
    return found


def _encodings(value: bytes) -> list[str]:
    names = [_text(part) for part in value.split(b"\\")] if value else []
    return pydicom.charset.convert_encodings([n for n in names] or ["ISO_IR 6"])


def _decode_person_name(value: bytes, encodings: list[str]) -> str:
    if not value:
        return ""
    try:
        return str(pydicom.charset.decode_bytes(value.rstrip(b"\x00 "), encodings, {0x5E, 0x3D}))
    except (LookupError, ValueError):
        return value.rstrip(b"\x00 ").decode("latin-1")


def _dictionary_vr(tag: int) -> bytes | None:
    """The data dictionary's VR of a standard tag (the first of "US or SS"), None if unknown."""
    try:
        return dictionary_VR(tag).split(" ")[0].encode("ascii")
    except KeyError:
        return None


def _may_be_sequence(buf: memoryview, element: Element) -> bool:
    """Whether a value of unknown representation opens like an implicit VR sequence."""
    if element.length == UNDEFINED_LENGTH:
        return True
    start = element.value_start
    return element.length >= 8 and bytes(buf[start : start + 4]) in (_ITEM_TAG, _SEQ_END_TAG)


def _encode_or_drop(tag: int, vr: bytes, value: bytes, ctx: _Context) -> bytes | None:
    """Encode under `vr`; a value that cannot take that VR's form is dropped, not passed on."""
    try:
        return encode_element(tag, vr, value, ctx.implicit)
    except CodecError:
        return None


def _clean_descriptor(value: bytes, vr: bytes, encodings: list[str]) -> bytes:
    """Clean Descriptors by the allow-list: only vocabulary terms and numbers with units stay.

    It never relies on finding the patient's identifiers elsewhere in the header: a name, a
    phone number or an MRN that appears only here is not a vocabulary term, so it is replaced.
    """
    raw = value.rstrip(b"\x00 ")
    if not raw:
        return b""
    if any(byte >= 0x80 or byte == 0x1B for byte in raw):
        try:
            text = str(pydicom.charset.decode_bytes(raw, encodings, set()))
        except (LookupError, ValueError):
            return REPLACEMENT.encode("ascii")
        if "\x1b" in text:
            return REPLACEMENT.encode("ascii")  # an escape sequence we could not interpret
    else:
        text = raw.decode("ascii")
    words = vocabulary()
    values = text.split("\\") if vr in _MULTI_VALUED_TEXT else [text.replace("\\", " ")]
    cleaned = [words.clean(part) for part in values]
    if vr == b"CS" and any(REPLACEMENT in part for part in cleaned):
        return _dummy(vr)  # "*" is not a CS character
    # Kept tokens are vocabulary words, hence ASCII, valid in every character set.
    return "\\".join(cleaned).encode("ascii")


def _shift_one(value: bytes, days: int) -> bytes:
    text = value.decode("ascii").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return b""  # unparseable or partial dates cannot be shifted, so they are dropped
    shifted = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    return (shifted.strftime("%Y%m%d") + text[8:]).encode("ascii")


def _date_bounds(part: bytes, vr: bytes) -> list[bytes]:
    """Split one DA/DT value into its range bounds (one bound when it is not a range).

    A DT may end in a UTC offset "-HHMM", which is not a range separator: a 4-digit piece
    after a full date that reads as a valid offset stays with the DT before it.
    """
    if vr != b"DT":
        return part.split(b"-", 1) if len(part) > 14 or part.count(b"-") else [part]
    bounds: list[bytes] = []
    for piece in part.split(b"-"):
        is_offset = (
            bounds
            and len(bounds[-1]) > 4
            and b"+" not in bounds[-1]
            and b"-" not in bounds[-1]
            and len(piece) == 4
            and piece.isdigit()
            and int(piece[:2]) <= 14
            and piece[2:] in (b"00", b"15", b"30", b"45")
        )
        if is_offset:
            bounds[-1] += b"-" + piece
        else:
            bounds.append(piece)
    return bounds


def _shift_dates(value: bytes, days: int, vr: bytes = b"DA") -> bytes:
    """Shift every date of a DA/DT value (multi-valued and ranges too) by `days`."""
    out = []
    for part in value.rstrip(b"\x00 ").split(b"\\"):
        bounds = _date_bounds(part, vr)
        out.append(b"-".join(_shift_one(p, days) if p else b"" for p in bounds))
    return b"\\".join(out)


def _dummy(vr: bytes) -> bytes:
    if vr in _DUMMY_TEXT:
        return _DUMMY_TEXT[vr]
    if vr in _BINARY_WIDTH:
        return b"\x00" * _BINARY_WIDTH[vr]
    if vr in TEXT_VRS:
        return b"ANONYMIZED"
    return b"\x00\x00"


def _reencode(part10: bytes) -> bytes:
    """Decode with pydicom and re-encode as explicit VR little endian Part 10."""
    try:
        ds = pydicom.dcmread(io.BytesIO(part10), force=True)
        if ds.original_encoding[1] is False and "PixelData" in ds:
            # Read big endian: pydicom converts every value but the pixel data, which must
            # be decoded in the source byte order before the transfer syntax changes.
            _pixels_to_little_endian(ds)
        meta = FileMetaDataset(getattr(ds, "file_meta", FileMetaDataset()))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta = meta
        if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
            raise DeidError(QuarantineReason.UNDECODABLE, "compressed pixel data needs Part 10")
        out = io.BytesIO()
        # dcmwrite, unlike save_as, may change the byte order of a data set read big endian.
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
    except DeidError:
        raise
    except Exception as exc:
        raise DeidError(QuarantineReason.UNDECODABLE, "not a DICOM data set") from exc
    data = out.getvalue()
    if data[128:132] != b"DICM":
        raise DeidError(QuarantineReason.UNDECODABLE, "not a DICOM data set")
    return data


def _pixels_to_little_endian(ds: Dataset) -> None:
    """Replace the native pixel data of a data set read big endian by its little endian form."""
    if ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed:
        raise DeidError(QuarantineReason.UNDECODABLE, "compressed big endian pixel data")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise DeidError(QuarantineReason.UNDECODABLE, "big endian pixel data") from exc
    if bits == 1:
        data = pack_bits(pixels)
    elif pixels.dtype.itemsize * 8 == bits:
        data = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            ds.PlanarConfiguration = 0  # pixel_array returns the samples interleaved
    else:
        raise DeidError(QuarantineReason.UNDECODABLE, "big endian pixel data")
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
