from django.apps import AppConfig


class EcrfConfig(AppConfig):
    name = "ecrf"
