"""A tenant's pooled part by columns (exports.pooling.columns, ADR 0016) releases exactly
what deid's rules release: the same part with every value sent through those rules one
by one, and a whole-entry reference built here from the entry-level functions (the
pipeline the columns replaced), give the same rows, bytes and counts. The values are odd
on purpose: stored behind the services' back as a bad import or a manual fix might."""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pyarrow as pa
import pytest
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from exports import deid, extract
from exports.pooling import aggregate, columns, harmonise
from exports.pooling.models import Consortium, DataSharingAgreement, PooledRun
from exports.records import EntryRecord
from tests.exports.test_pooling import HARMONISE, varied_tenants  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db

ITEMS = ["visit_date", "sex", "pregnant", "weight", "height", "bmi", "pain", "symptoms", "diag_date", "dose_time",
         "seen_at", "notes", "email", "sbp", "dbp", "meds", "ghost"]

# JSON as stored (numbers keep their digits in jsonb: 70.50 is not 70.5 to PostgreSQL,
# but is to Python, which reads it as a float).
ODD_VALUES = [
    None,  # as saved through the API
    '{"visit_date": "2024-02-29", "sex": 1, "pregnant": true, "weight": 70.50, "height": 1e2, "pain": "7",'
    ' "bmi": "n/a", "symptoms": [], "diag_date": "2024", "dose_time": "23:59:59",'
    ' "seen_at": "2026-01-02T09:15:30+08:00", "notes": "said \\"ok\\", then\\nleft", "email": "x@y.z",'
    ' "sbp": 120.0, "dbp": -0.0, "ghost": 5, "meds": [], "weight_unit": "kg"}',
    '{"visit_date": "1999-12-31", "sex": "9", "pregnant": 2, "weight": 0.00001, "height": 12345678901234567890,'
    ' "pain": 3.25, "bmi": 24.4, "symptoms": ["c", "a"], "diag_date": "2024-02", "seen_at": "2026-01-02 09:15",'
    ' "notes": "逗号,和引号\\"", "sbp": "120", "dbp": " 80",'
    ' "meds": [{"med_name": "A", "med_dose": "0.5"}, {"med_dose": null}]}',
    '{"visit_date": null, "sex": null, "pregnant": "yes", "weight": "70,5", "height": -5, "pain": 10,'
    ' "symptoms": ["z"], "notes": "", "sbp": 1.5e3, "dbp": 1.0, "meds": [{"med_name": "B", "med_dose": -0.01}]}',
    '{"visit_date": "2026-11-27", "sex": "1", "pregnant": "1", "weight": 123.456789012345678, "height": 170,'
    ' "pain": 0, "symptoms": ["b"], "notes": "plain", "sbp": "1e3", "dbp": "+7", "diag_date": "2024-06-15",'
    ' "bmi": 0.5}',
    '{"visit_date": "2026-01-31", "sex": "2", "pregnant": 0, "weight": -0.04, "height": 0, "notes": "cr\\rline",'
    ' "sbp": 99999999999999999, "dbp": 0.1, "pain": "3.50", "seen_at": "2026-03-01T10:00"}',
]
ODD_MISSING = ('{"weight": "NA", "meds[0].med_dose": "UNK", "notes": "ASKU", "ghost": "NA", "height": "XX",'
               ' "hdr": "NA", "unknown.x": "NASK", "sbp": 1, "dbp": "NASK"}')


@pytest.fixture
def odd_world(varied_tenants):  # noqa: F811
    """The varied tenants (their own code lists and units), their entries overwritten with
    odd values, and a consortium pooling every VITALS item (and one no version has)."""
    for tenant in varied_tenants["tenants"]:
        with schema_context(tenant.schema_name), connection.cursor() as cursor:
            cursor.execute("SELECT id FROM ecrf_entry ORDER BY id")
            for index, (entry_id,) in enumerate(cursor.fetchall()):
                values = ODD_VALUES[index % len(ODD_VALUES)]
                if values is not None:
                    cursor.execute("UPDATE ecrf_entry SET values = %s::jsonb WHERE id = %s", [values, entry_id])
                if index % 3 == 1:
                    cursor.execute("UPDATE ecrf_entry SET missing = %s::jsonb WHERE id = %s", [ODD_MISSING, entry_id])
    connection.set_schema_to_public()
    consortium = Consortium.objects.create(
        slug="odd", name="Odd values", coordinating_organisation="CDC", quasi_identifiers=[], k=1,
        common_data_elements=[{"form": "VITALS", "items": ITEMS, "safe_text": ["notes"], "harmonise": HARMONISE}])
    for tenant in varied_tenants["tenants"]:
        DataSharingAgreement.objects.create(consortium=consortium, tenant=tenant, study_code="CRF",
                                            fields=[f"VITALS.{item}" for item in ITEMS],
                                            accepted_by=varied_tenants["admin"])
    run = PooledRun.objects.create(consortium=consortium, requested_by=varied_tenants["admin"])
    return {**varied_tenants, "consortium": consortium, "run": PooledRun.objects.select_related("consortium")
            .get(pk=run.pk)}


def _part(run: PooledRun, agreement: DataSharingAgreement, folder: Any, *, vectorise: bool) -> tuple[pa.Table, dict]:
    from django.core.files.storage import default_storage

    folder.mkdir(exist_ok=True)
    result = aggregate._extract_part(run, agreement, str(folder), vectorise=vectorise)
    with default_storage.open(result["parts"]["cells"], "rb") as handle:
        table = pa.ipc.open_stream(handle.read()).read_all()
    return table, {key: value for key, value in result.items() if key not in ("parts", "values_by_rules")} | {
        "by_rules": result["values_by_rules"]}


def _reference(run: PooledRun, agreement: DataSharingAgreement) -> tuple[str, dict[str, Any]]:
    """The part's lines and counts as the entry-level pipeline gives them: every entry
    through deid.deidentify_entries and the harmoniser whole, then ordered (pseudonym,
    event in schedule order, occurrence, form; an entry's values in the definition's
    order, then its missing-data codes by path) and written field by field."""
    consortium, tenant = run.consortium, agreement.tenant
    policy = aggregate._policy(consortium, tenant.slug, aggregate.consortium_keys(consortium))
    consented = aggregate._consented(consortium, agreement)
    with schema_context(tenant.schema_name), transaction.atomic():
        from studies.models import Study

        study = Study.objects.get(code=agreement.study_code)
        scope = extract.ExportScope(study_id=study.pk, forms=tuple(sorted(consented)))
        data = extract.study_data(scope, snapshot_at=timezone.now())
        definitions = {(form.code, form.version): form.definition for form in data.study.forms}
        harmoniser = harmonise.Harmoniser(harmonise.declared(consortium), tenant=tenant.slug,
                                           definitions=definitions)
        events = dict(extract._event_order(study.pk))
        dropped: set[str] = set()

        def consented_only(entry: EntryRecord) -> EntryRecord:
            items = consented[entry.form_code]
            return harmonise.with_values(
                entry, {code: value for code, value in entry.values.items() if code in items},
                {path: code for path, code in entry.missing.items()
                 if path.split("[", 1)[0].split(".", 1)[0] in items})

        entries = [harmoniser.apply(entry) for entry in deid.deidentify_entries(
            (consented_only(entry) for entry in data.entries if entry.form_code in consented), policy=policy,
            definitions=definitions, dropped=dropped)]
    entries.sort(key=lambda e: (e.subject_key, events.get(e.event_code, 100000), e.event_code, e.sequence,
                                e.form_code))
    lines, counted = [], 0
    for entry in entries:
        order = {}
        for item in definitions[(entry.form_code, entry.form_version)]["items"]:
            order.setdefault(item["code"], len(order))
            for child in item.get("items") or [] if item.get("type") == "group" else []:
                order.setdefault(child["code"], len(order))
        cells = [cell for code in sorted(entry.values, key=lambda c: order[c])
                 for cell in harmonise.value_cells(code, entry.values[code])]
        cells += [(path, "", code) for path, code in sorted(entry.missing.items())]
        counted += bool(cells)
        visit = entry.visit_date.isoformat() if entry.visit_date else ""
        for item, row, text in cells:
            fields = [tenant.slug, entry.subject_key, entry.event_code, str(entry.sequence), visit, entry.form_code,
                      str(entry.form_version), item, row, text]
            lines.append(",".join(columns.csv_field(field) for field in fields) + "\n")
    return "".join(lines), {"entries": counted, "values_extracted": len(lines), "items_dropped": sorted(dropped),
                            "values_harmonised": dict(sorted(harmoniser.changed.items())),
                            "values_unmapped": dict(sorted(harmoniser.unmapped.items()))}


@pytest.mark.parametrize("slug", ["alpha", "beta", "gamma"])
@pytest.mark.parametrize("shape", ["whole", "small groups, some items"])
def test_the_columns_release_what_deids_rules_release_value_by_value_and_entry_by_entry(odd_world, slug, shape,
                                                                                        tmp_path, monkeypatch):
    agreement = DataSharingAgreement.objects.select_related("tenant").get(consortium=odd_world["consortium"],
                                                                          tenant__slug=slug)
    if shape != "whole":
        # Groups of one or two entries (several record batches a part), and a consent
        # that leaves items out (so the values' query filters keys in SQL).
        monkeypatch.setattr(columns, "LISTING_BLOCK_BYTES", 160)
        agreement.fields = [f"VITALS.{item}" for item in ITEMS if item not in ("weight", "notes", "seen_at")]
        agreement.save(update_fields=["fields"])
    run = odd_world["run"]
    by_columns, counts = _part(run, agreement, tmp_path / "columns", vectorise=True)
    by_rules, rule_counts = _part(run, agreement, tmp_path / "rules", vectorise=False)
    assert by_columns.equals(by_rules), slug
    # The odd values went to deid's rules, the plain ones were judged by columns.
    assert 0 < counts.pop("by_rules") < rule_counts.pop("by_rules")
    assert counts == rule_counts
    lines, reference_counts = _reference(run, agreement)
    assert "".join(by_columns.column("line").to_pylist()) == lines
    assert {key: counts[key] for key in reference_counts} == reference_counts
    # The odd values did reach both ways of judging (not all sent to the rules) ...
    assert counts["values_extracted"] > 30 and counts["items_dropped"]
    if shape != "whole":
        with default_storage.open(f"pooling/odd/{run.pk}/parts/{slug}.cells.arrow", "rb") as handle:
            assert len(pa.ipc.open_stream(handle.read()).read_all().to_batches()) > 2
        assert not {"weight", "notes", "seen_at"} & set(by_columns.column("item").to_pylist())
    # ... and each row's line is its typed columns as CSV.
    for row, typed in zip(csv.reader(io.StringIO(lines)), by_columns.drop_columns(["line"]).to_pylist(),
                          strict=True):
        assert row == ["" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
                       for value in typed.values()]


def test_the_odd_values_come_out_as_python_writes_them(odd_world, tmp_path):
    agreement = DataSharingAgreement.objects.select_related("tenant").get(consortium=odd_world["consortium"],
                                                                          tenant__slug="beta")
    table, counts = _part(odd_world["run"], agreement, tmp_path, vectorise=True)
    rows = table.drop_columns(["line"]).to_pylist()

    def values(item: str) -> list[Any]:
        return [row["value"] for row in rows if row["item"] == item]

    # Beta keeps weight in lb: 70.50 lb -> 32.0 kg; -0.04 lb rounds to "-0.0", as Decimal writes it.
    assert "32.0" in values("weight") and "-0.0" in values("weight")
    assert "70,5" not in values("weight")  # not a number: dropped, not converted
    assert str((Decimal("12345678901234567890") * Decimal("2.54")).quantize(Decimal(1), ROUND_HALF_UP)) in \
        values("height")  # inches to cm, exact
    assert "1e3" in values("sbp") and " 80" in values("dbp") and "+7" in values("dbp")  # numbers as text, as stored
    assert "100000000000000000" not in values("sbp") and "99999999999999999" in values("sbp")
    assert 'said "ok", then\nleft' in values("notes") and "cr\rline" in values("notes")
    assert "email" not in {row["item"] for row in rows}  # free text not marked safe
    assert counts["items_dropped"] and "VITALS.ghost" in counts["items_dropped"]
    assert {row["item"] for row in rows if row["value"] in ("NA", "UNK", "ASKU", "NASK")} >= {
        "weight", "meds[0].med_dose", "notes", "ghost", "dbp"}
    assert not {row["item"] for row in rows} & {"hdr", "unknown.x"}  # not consented
    assert json.dumps(counts)  # never a value object in the counts


def test_a_date_no_calendar_has_fails_the_part_by_columns_too(odd_world, tmp_path):
    """The columns never release a date they cannot read: "2024-02-30" goes to deid's
    rules, which refuse it (the part fails, as test_pooling's failed-part test shows for
    the whole run); a date before the year 1000 is shifted by the rules and kept."""
    from ecrf.models import Entry

    agreement = DataSharingAgreement.objects.select_related("tenant").get(consortium=odd_world["consortium"],
                                                                          tenant__slug="alpha")
    with schema_context(agreement.tenant.schema_name):
        first, second = Entry.objects.order_by("pk")[:2]
        Entry.objects.filter(pk=second.pk).update(values={"visit_date": "0999-06-15", "diag_date": "0999-06"})
    table, counts = _part(odd_world["run"], agreement, tmp_path / "early", vectorise=True)
    lines, reference = _reference(odd_world["run"], agreement)
    assert "".join(table.column("line").to_pylist()) == lines
    assert {key: counts[key] for key in reference} == reference
    early = [row["value"] for row in table.to_pylist() if row["item"] == "visit_date" and row["value"]
             and row["value"].startswith("0")]
    assert len(early) == 1 and early[0][:4] in ("0998", "0999")
    with schema_context(agreement.tenant.schema_name):
        Entry.objects.filter(pk=first.pk).update(values={"visit_date": "2024-02-30"})
    with pytest.raises(deid.DeidError):
        _part(odd_world["run"], agreement, tmp_path / "bad", vectorise=True)


def test_a_part_whose_consented_items_may_not_leave_is_empty_and_says_what_it_dropped(odd_world, tmp_path):
    agreement = DataSharingAgreement.objects.select_related("tenant").get(consortium=odd_world["consortium"],
                                                                          tenant__slug="alpha")
    agreement.fields = ["VITALS.email"]  # free text not marked safe: none of it leaves
    agreement.save(update_fields=["fields"])
    table, counts = _part(odd_world["run"], agreement, tmp_path, vectorise=True)
    assert table.num_rows == 0 and table.schema.equals(columns.PART_SCHEMA)
    assert counts["entries"] == counts["values_extracted"] == 0 and counts["items_dropped"] == ["VITALS.email"]
    lines, reference = _reference(odd_world["run"], agreement)
    assert lines == "" and {key: counts[key] for key in reference} == reference


@pytest.mark.parametrize(("factor", "places", "texts"), [
    ("0.45359237", 1, ["70.3", "155.5", "-0.04", "0", "-0", "12345678901234", "1234567890123456", ".5", "5.", "+3"]),
    ("2.54", 0, ["67", "0.5", "1.5", "-1.5", "2.5", "9999999999999999"]),
    ("1000", 2, ["0.1", "0.005", "-0.005", "123.456"]),
    # A factor of 17 digits (the float repr of 1/0.45359237) and one of 10**9: Decimal's
    # 28-digit context would round or refuse; the columns leave such values to the rules.
    ("2.2046226218487757", 0, ["70508929833112.8", "1.5"]),
    ("1000000000", 6, ["1234567890123456", "1"]),
])
def test_a_unit_conversion_by_columns_is_decimals_own_or_left_to_the_rules(factor, places, texts):
    from decimal import InvalidOperation

    rule = harmonise.Rule(path="w", group="", code="w", factor=Decimal(factor), quantum=Decimal(1).scaleb(-places))
    done, converted = columns._converted(pa.array(texts, pa.string()), rule)
    results = converted.to_pylist() if converted is not None else []
    assert len(results) == int(done.sum())
    released = iter(results)
    for text, by_columns in zip(texts, done.tolist(), strict=True):
        if not by_columns:
            continue
        try:
            mapped, value = harmonise.harmonised_value(text, rule)
        except InvalidOperation:  # the rules would fail the part: the columns must not release it
            pytest.fail(f"{text} x {factor} released by columns, refused by Decimal")
        assert mapped and harmonise.text_of(value) == next(released), text
    if len(factor.replace(".", "").lstrip("0")) > 12 or Decimal(factor) >= 10**6:
        assert not done.any()  # every value to the rules
    else:
        assert done.sum() >= len(texts) - 2  # (a negative zero goes to the rules)
