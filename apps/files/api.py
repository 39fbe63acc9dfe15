"""The files API: upload, list, metadata, download, delete. Only ever the caller's own files."""

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import FileResponse, HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import StrictInputSerializer
from apps.core.exceptions import ApplicationError
from apps.core.parsers import FormParser, MultiPartParser
from apps.core.text import ascii_digits
from apps.files import selectors, services
from apps.files.models import UserFile
from apps.tasks.api import TaskCursorPagination

FILE_ID_PARAMETER = OpenApiParameter("file_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# Multipart framing around the file: a request this much larger than the limit is refused unread.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class SizeLimitUploadHandler(FileUploadHandler):
    """Stops an upload as soon as it passes FILE_UPLOAD_MAX_BYTES, with a 413."""

    def __init__(self, request: HttpRequest | None = None, *, limit: int) -> None:
        super().__init__(request)
        self.limit = limit

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > self.limit:
            raise services.FileTooLarge(self.limit)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def _declared_length(request: Request) -> int:
    """The Content-Length header's bytes; a 400 if it is not a number (int() of it was a 500:
    gunicorn refuses such a request itself, the test client and other servers may not)."""
    value = request.META.get("CONTENT_LENGTH") or "0"
    if not ascii_digits(value):
        raise ApplicationError(
            "Malformed request: the Content-Length header must be a number of bytes.",
            code="malformed_request",
            fields={"Content-Length": ["Must be a number of bytes."]},
        )
    return int(value)


class FileOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    size = serializers.IntegerField()
    content_type = serializers.CharField()
    sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()
    source_task = serializers.UUIDField(
        source="source_task_id", allow_null=True, help_text="The task that produced the file."
    )
    download_url = serializers.CharField(source="download_path")


class FilePageOutputSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = FileOutputSerializer(many=True)


class FileListCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(StrictInputSerializer):
        file = serializers.FileField(allow_empty_file=True, use_url=False)
        name = serializers.CharField(
            required=False, max_length=255, help_text="Defaults to the uploaded file's name."
        )

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before anything reads the body, so that an oversized upload stops early.
        if request.method == "POST":
            limit = settings.FILE_UPLOAD_MAX_BYTES
            request.upload_handlers = [
                SizeLimitUploadHandler(request, limit=limit),
                *request.upload_handlers,
            ]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        operation_id="files_list",
        parameters=[
            OpenApiParameter("name", str, description="Only files with this exact name."),
            OpenApiParameter(
                "source_task", OpenApiTypes.UUID, description="Only files this task produced."
            ),
            OpenApiParameter("cursor", str, description="The opaque cursor of a next link."),
            OpenApiParameter("page_size", int, description="Files per page, 1..200 (default 50)."),
        ],
        responses={200: FilePageOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        files = selectors.file_list(user=request.user, filters=request.query_params)  # type: ignore[arg-type]
        paginator = TaskCursorPagination()
        page = paginator.paginate_queryset(files, request, view=self)
        return paginator.get_paginated_response(FileOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="files_upload",
        request={"multipart/form-data": InputSerializer},
        responses={201: FileOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        limit = settings.FILE_UPLOAD_MAX_BYTES
        if _declared_length(request) > limit + MULTIPART_OVERHEAD_BYTES:
            raise services.FileTooLarge(limit)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size is not None and upload.size > limit:
            raise services.FileTooLarge(limit)  # read before our handler ran (a session's CSRF)
        created = services.file_create(
            owner_id=request.user.id,  # type: ignore[arg-type]
            name=data.validated_data.get("name") or upload.name or "file",
            content=upload,
            content_type=upload.content_type,
            max_bytes=limit,
        )
        response = Response(FileOutputSerializer(created).data, status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/files/{created.id}"
        return response


@extend_schema(parameters=[FILE_ID_PARAMETER])
class FileDetailApi(APIView):
    @extend_schema(responses={200: FileOutputSerializer})
    def get(self, request: Request, file_id: str) -> Response:
        found = selectors.file_get(user=request.user, file_id=file_id)  # type: ignore[arg-type]
        return Response(FileOutputSerializer(found).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, file_id: str) -> Response:
        found = selectors.file_get(user=request.user, file_id=file_id)  # type: ignore[arg-type]
        services.file_delete(file=found)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AnyContentNegotiation(BaseContentNegotiation):
    """The download answers with the file's own type, whatever the client's Accept says; errors
    are still JSON."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: Any, format_suffix: Any = None) -> Any:
        return (renderers[0], renderers[0].media_type)


@extend_schema(parameters=[FILE_ID_PARAMETER])
class FileDownloadApi(APIView):
    content_negotiation_class = AnyContentNegotiation

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, file_id: str) -> FileResponse:
        found: UserFile = selectors.file_get(user=request.user, file_id=file_id)  # type: ignore[arg-type]
        response = FileResponse(
            services.file_open(found),
            as_attachment=True,
            filename=found.name,
            content_type=found.content_type,
        )
        response["Content-Length"] = str(found.size)
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "sandbox"
        return response
