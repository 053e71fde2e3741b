"""The default connection, typed loosely: django-tenants adds schema methods
(set_schema, set_schema_to_public, schema_name) that django-stubs cannot know about."""

from typing import Any

from django.db import connection as _connection

tenant_connection: Any = _connection
