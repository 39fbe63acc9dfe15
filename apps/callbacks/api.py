from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.callbacks import services


class CallbackSecretApi(APIView):
    """The secret the caller's task callbacks are signed with (X-TaskFlow-Signature)."""

    @extend_schema_serializer(component_name="CallbackSecret")
    class OutputSerializer(serializers.Serializer):
        secret = serializers.CharField()
        header = serializers.CharField()

    @extend_schema(operation_id="callbacks_secret", responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        secret = services.user_signing_secret(request.user.id)  # type: ignore[arg-type]
        response = Response({"secret": secret, "header": services.SIGNATURE_HEADER})
        response["Cache-Control"] = "no-store"  # a secret: no shared or browser cache keeps it
        return response
