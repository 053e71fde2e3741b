"""Serializers of the eCRF API (parsing only; rules live in ecrf.services)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ecrf.models import Entry, FormDefinition, FormVersion, Query, QueryMessage, Signature, SignatureMeaning


class FormVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = FormVersion
        fields = ["id", "number", "status", "definition", "note", "created", "published_at"]


class FormSerializer(serializers.ModelSerializer):
    versions = serializers.SerializerMethodField()

    class Meta:
        model = FormDefinition
        fields = ["id", "code", "study", "versions"]

    def get_versions(self, obj: FormDefinition) -> list[dict[str, Any]]:
        return [{"id": v.pk, "number": v.number, "status": v.status, "published_at": v.published_at}
                for v in sorted(obj.versions.all(), key=lambda v: -v.number)]


class FormDraftSerializer(serializers.Serializer):
    definition = serializers.JSONField()
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class FileUploadSerializer(serializers.Serializer):
    item = serializers.CharField(max_length=64)
    file = serializers.FileField(max_length=255)


class RedcapUploadSerializer(serializers.Serializer):
    file = serializers.FileField(max_length=255)


class EntrySaveSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)
    values = serializers.DictField(allow_empty=True)
    missing = serializers.DictField(child=serializers.CharField(max_length=10), required=False, default=dict)
    complete = serializers.BooleanField(default=False)
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    reasons = serializers.DictField(child=serializers.CharField(max_length=1000, allow_blank=True), required=False,
                                    default=dict)


_SAVE_KEYS = frozenset(EntrySaveSerializer().fields)
_REASON_MAX = 1000
_MISSING_CODE_MAX = 10


def _plain_text(value: Any, *, limit: int, blank: bool) -> bool:
    """Text the serializer's CharField would return unchanged: no surrounding blanks to
    trim, within the limit, no NUL and no lone surrogate (both refused there)."""
    if type(value) is not str or len(value) > limit or value != value.strip() or (not blank and not value):
        return False
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def entry_save_input(data: Any) -> dict[str, Any]:
    """The validated body of an entry save, as EntrySaveSerializer gives it.

    A well-formed body (nearly every save) is checked here directly: building and running
    the DRF serializer costs about a quarter of a millisecond, a tenth of the save's own
    Python time (bench/form_save.py). Anything this check does not accept as is, including
    every malformed body, goes through the serializer, so the messages are its messages.
    tests/ecrf/test_entry_save_input.py holds the two to the same results."""
    if type(data) is dict and data.keys() <= _SAVE_KEYS and type(data.get("values")) is dict:
        version = data.get("version")
        missing = data.get("missing", {})
        complete = data.get("complete", False)
        reason = data.get("reason", "")
        reasons = data.get("reasons", {})
        if ((version is None or (type(version) is int and version >= 0)) and type(complete) is bool
                and type(missing) is dict and type(reasons) is dict
                and _plain_text(reason, limit=_REASON_MAX, blank=True)
                and all(_plain_text(code, limit=_MISSING_CODE_MAX, blank=False) for code in missing.values())
                and all(_plain_text(text, limit=_REASON_MAX, blank=True) for text in reasons.values())):
            return {"version": version, "values": data["values"], "missing": missing, "complete": complete,
                    "reason": reason, "reasons": reasons}
    serializer = EntrySaveSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class QueryMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = QueryMessage
        fields = ["kind", "text", "author", "at"]


class QuerySerializer(serializers.ModelSerializer):
    messages = QueryMessageSerializer(many=True, read_only=True)
    form_code = serializers.CharField(source="entry.form.code", read_only=True)
    event_code = serializers.CharField(source="entry.task.event_code", read_only=True)

    class Meta:
        model = Query
        fields = ["id", "entry", "subject", "site", "form_code", "event_code", "item", "origin", "check_code",
                  "status", "created", "answered_at", "closed_at", "messages"]


class QueryRaiseSerializer(serializers.Serializer):
    item = serializers.CharField(max_length=200)
    text = serializers.CharField(max_length=4000)


class QueryActSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=4000)


class VerifySerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.CharField(max_length=200), max_length=2000, required=False,
                                  allow_null=True, default=None)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class SignSerializer(serializers.Serializer):
    password = serializers.CharField(max_length=200, trim_whitespace=False)
    meaning = serializers.ChoiceField(choices=SignatureMeaning.choices)


class SignatureSerializer(serializers.ModelSerializer):
    meaning_text = serializers.CharField(source="get_meaning_display", read_only=True)
    valid = serializers.SerializerMethodField()

    class Meta:
        model = Signature
        fields = ["id", "signer", "signer_name", "meaning", "meaning_text", "signed_at", "content_hash", "valid",
                  "invalidated_at", "invalidated_reason"]

    def get_valid(self, obj: Signature) -> bool:
        return obj.invalidated_at is None


def entry_payload(*, entry: Entry | None, version: FormVersion, task: Any, definition: bool = True
                  ) -> dict[str, Any]:
    body = {
        "entry": entry.pk if entry else None,
        "task": task.pk, "subject": task.subject_id, "event_code": task.event_code, "sequence": task.sequence,
        "window": {"open": task.window_open, "target": task.target_date, "close": task.window_close,
                   "status": task.status},
        "form": version.form_id, "form_version": version.number, "definition": version.definition,
        "status": entry.status if entry else "not_started", "version": entry.version if entry else 0,
        "values": entry.values if entry else {}, "missing": entry.missing if entry else {},
        "verified": entry.verified if entry else {}, "locked": entry.locked if entry else False,
    }
    if not definition:
        del body["definition"]
    return body
