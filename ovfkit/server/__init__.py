"""The HTTP service for ZStack's ExportVmOvaPackage and image-package REST endpoints
(``ovfkit serve``). Importing this package loads Starlette; nothing else happens on import."""

from __future__ import annotations

from .app import JOB_MODE_HEADER, ServiceConfig, create_app
from .backend import Backend
from .openapi import openapi_document

__all__ = ["JOB_MODE_HEADER", "Backend", "ServiceConfig", "create_app", "openapi_document"]
