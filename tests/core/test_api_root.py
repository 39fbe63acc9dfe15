from django.urls import Resolver404, resolve

from apps.core.api_root import ENDPOINTS


def test_the_api_root_lists_endpoints_that_exist(anon):
    response = anon.get("/api/")
    assert response.status_code == 200
    endpoints = response.json()["endpoints"]
    assert endpoints == ENDPOINTS
    for path in endpoints.values():
        try:
            resolve(path)
        except Resolver404:  # pragma: no cover - the assertion below reports it
            raise AssertionError(f"{path} is listed but does not exist") from None
