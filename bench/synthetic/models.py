"""25 models built in a loop: each has a handful of typed columns, an index, a unique
constraint, a foreign key to the previous model and one to the (public) user."""

from __future__ import annotations

from django.conf import settings
from django.db import models

MODEL_COUNT = 25


def _build(index: int, previous: str | None) -> type[models.Model]:
    attrs: dict[str, object] = {
        "__module__": __name__,
        "code": models.CharField(max_length=40),
        "label": models.CharField(max_length=200, blank=True),
        "value_num": models.DecimalField(max_digits=12, decimal_places=4, null=True),
        "value_json": models.JSONField(default=dict),
        "recorded_at": models.DateTimeField(db_index=True),
        "is_active": models.BooleanField(default=True),
        "owner": models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                   related_name="+", db_constraint=False),
        "Meta": type("Meta", (), {
            "app_label": "synthetic",
            "constraints": [models.UniqueConstraint(fields=["code", "recorded_at"],
                                                    name=f"synth{index:02d}_code_at_uniq")],
            "indexes": [models.Index(fields=["is_active", "code"], name=f"synth{index:02d}_act_code_idx")],
        }),
    }
    if previous:
        attrs["parent"] = models.ForeignKey(previous, null=True, on_delete=models.CASCADE, related_name="+")
    return type(f"Thing{index:02d}", (models.Model,), attrs)


_previous: str | None = None
for _i in range(MODEL_COUNT):
    _model = _build(_i, _previous)
    globals()[_model.__name__] = _model
    _previous = f"synthetic.{_model.__name__}"
