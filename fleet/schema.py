"""How the OpenAPI schema describes the agent's request signing (loaded by FleetConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from .agent import signing


class VehicleSignatureScheme(OpenApiAuthenticationExtension):
    target_class = "fleet.authentication.VehicleSignatureAuthentication"
    name = "vehicleSignature"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": signing.HEADER_SIGNATURE,
            "description": (
                "Ed25519 signature by the car's credential over `IDLEFLEET-ED25519-V1\\nMETHOD\\n/path?query\\n"
                f"timestamp\\nnonce\\nsha256(body)`, sent with {signing.HEADER_KEY}, {signing.HEADER_TIMESTAMP} "
                f"(Unix seconds, within 300 s) and {signing.HEADER_NONCE} (never reused). See fleet/agent/signing.py."
            ),
        }
