"""How the OpenAPI schema describes a person's token (loaded by AccountsConfig.ready): as knox's, which ours extends."""

from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme


class ApiTokenScheme(KnoxTokenScheme):
    target_class = "accounts.authentication.TokenAuthentication"
