from django.apps import AppConfig


class SyntheticConfig(AppConfig):
    """A 25-model tenant app, shaped like a clinical app (FKs, indexes, uniques, a link
    to the public User), so that provisioning and migrate benchmarks and the schema
    replay tests work on a realistic schema rather than on empty tenant apps."""

    name = "bench.synthetic"
    label = "synthetic"
