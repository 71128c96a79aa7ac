"""A stand-in Lamassu v3 CA service for the reply-action tests (tests/test_actions.py).

It answers the five operations the actions use as Lamassu v3.8 does (201 with the issued certificate,
400 ``{"err": ...}`` on REVOKED -> REVOKED, 404 for an unknown CA or certificate, 401 for a wrong
token), behind mutual TLS (client certificates of tests/tls_broker.py's test PKI) and a bearer token,
and checks every request it receives and every answer it gives against the OpenAPI excerpt
``tests/fixtures/lamassu-ca-openapi.yaml`` with openapi-core: anything off the documented wire format
is recorded in :attr:`StandInCa.violations` (and the request is answered 400), so a test fails on it.

Its CAs are real (EC P-256 keys): a CSR is parsed, its signature checked, and a certificate issued
with the CSR's subject, so a test can verify the verification certificate with the CA's public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .tls_broker import Pki

SPEC = Path(__file__).parent / "fixtures" / "lamassu-ca-openapi.yaml"
PREFIX = "/api/ca/v1"


def lamassu_serial(number: int) -> str:
    """How Lamassu v3.5+ writes a serial number: hex of its bytes, lower case, no separators."""
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big").hex()


def dashed(serial: str) -> str:
    """The v1/AWS notifier spelling of a serial: hex byte pairs joined by '-'."""
    return "-".join(serial[i : i + 2] for i in range(0, len(serial), 2))


def b64pem(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()


@dataclass
class Ca:
    id: str
    common_name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def serial(self) -> str:
        return lamassu_serial(self.cert.serial_number)

    @property
    def b64pem(self) -> str:
        return b64pem(self.cert)


@dataclass
class Issued:
    cert: x509.Certificate
    issuer: Ca
    status: str = "ACTIVE"
    revocation_reason: str | None = None
    revoked_at: str | None = None


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class StandInCa:
    pki: Pki
    token: str
    spec_path: Path = SPEC
    cas: dict[str, Ca] = field(default_factory=dict)
    certificates: dict[str, Issued] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    revocations: list[str] = field(default_factory=list)  # serials whose status became REVOKED
    csrs: list[x509.CertificateSigningRequest] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _openapi: Any = None

    # --- state ---------------------------------------------------------------------------------

    def add_ca(self, common_name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        ca = Ca(str(uuid.uuid4()), common_name, key, cert)
        self.cas[ca.id] = ca
        self.certificates[ca.serial] = Issued(cert, ca)
        return ca

    def issue(self, ca: Ca, subject: x509.Name, public_key: Any) -> Issued:
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(ca.key, hashes.SHA256())
        )
        issued = Issued(cert, ca)
        self.certificates[lamassu_serial(cert.serial_number)] = issued
        return issued

    def add_device_certificate(self, ca: Ca, common_name: str = "device-1") -> str:
        """An ACTIVE certificate issued by ``ca``; returns its serial (Lamassu spelling)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.issue(ca, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key.public_key())
        return lamassu_serial(issued.cert.serial_number)

    def calls(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    # --- server --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api/ca"

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, like Lamassu's gateway with client certs
        return context

    async def start(self) -> None:
        # openapi-core (a dev dependency) is needed by the server only: the unit tests use the state alone.
        from openapi_core import OpenAPI  # noqa: PLC0415

        self._openapi = OpenAPI.from_file_path(str(self.spec_path))
        app = web.Application(middlewares=[self._checked])
        app.router.add_get(PREFIX + "/cas/{id}", self._get_ca)
        app.router.add_get(PREFIX + "/cas/cn/{cn}", self._get_cas_by_cn)
        app.router.add_post(PREFIX + "/cas/{id}/certificates/sign", self._sign)
        app.router.add_get(PREFIX + "/certificates/{sn}", self._get_certificate)
        app.router.add_put(PREFIX + "/certificates/{sn}/status", self._update_status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.server_context())
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _checked(self, request: web.Request, handler: Any) -> web.StreamResponse:
        from openapi_core.contrib.aiohttp import AIOHTTPOpenAPIWebRequest, AIOHTTPOpenAPIWebResponse  # noqa: PLC0415

        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw
        self.requests.append(Recorded(request.method, request.path, body, request.headers.get("Authorization")))
        try:
            self._openapi.validate_request(AIOHTTPOpenAPIWebRequest(request, body=raw or None))
        except Exception as exc:
            self.violations.append(f"request {request.method} {request.path}: {exc!r}: {_details(exc)}")
            return _error(400, f"request does not follow the API: {exc}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            response: web.StreamResponse = _error(401, "invalid or missing token")
        else:
            response = await handler(request)
        if isinstance(response, web.Response):
            try:
                self._openapi.validate_response(
                    AIOHTTPOpenAPIWebRequest(request, body=raw or None), AIOHTTPOpenAPIWebResponse(response)
                )
            except Exception as exc:
                self.violations.append(f"answer to {request.method} {request.path}: {exc!r}: {_details(exc)}")
        return response

    # --- handlers (as lamassuiot v3.8 backend/pkg/controllers/ca.go answers) -------------------

    async def _get_ca(self, request: web.Request) -> web.Response:
        ca = self.cas.get(request.match_info["id"])
        if ca is None:
            return _error(404, "CA not found")
        return _json(200, self._ca_json(ca))

    async def _get_cas_by_cn(self, request: web.Request) -> web.Response:
        found = [self._ca_json(ca) for ca in self.cas.values() if ca.common_name == request.match_info["cn"]]
        return _json(200, {"next": "", "list": found})

    async def _sign(self, request: web.Request) -> web.Response:
        ca = self.cas.get(request.match_info["id"])
        body = await request.json()
        try:
            csr = x509.load_pem_x509_csr(base64.b64decode(body["csr"], validate=True))
        except Exception as exc:
            return _error(400, f"struct validation error: {exc}")
        if ca is None:
            return _error(404, "CA not found")
        if not csr.is_signature_valid:
            return _error(400, "struct validation error: CSR signature")
        self.csrs.append(csr)
        issued = self.issue(ca, csr.subject, csr.public_key())
        return _json(201, self._certificate_json(issued))

    async def _get_certificate(self, request: web.Request) -> web.Response:
        issued = self.certificates.get(request.match_info["sn"])
        if issued is None:
            return _error(404, "certificate not found")
        return _json(200, self._certificate_json(issued))

    async def _update_status(self, request: web.Request) -> web.Response:
        issued = self.certificates.get(request.match_info["sn"])
        if issued is None:
            return _error(404, "certificate not found")
        body = await request.json()
        if issued.status == "REVOKED":
            return _error(400, "certificate status transition not allowed")  # v3.8: REVOKED is final
        issued.status = body["status"]
        if issued.status == "REVOKED":
            issued.revocation_reason = body.get("revocation_reason", "Unspecified")
            issued.revoked_at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
            self.revocations.append(request.match_info["sn"])
        return _json(200, self._certificate_json(issued))

    # --- JSON shapes (core/pkg/models) ---------------------------------------------------------

    def _certificate_json(self, issued: Issued) -> dict[str, Any]:
        cert = issued.cert
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer_names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        data: dict[str, Any] = {
            "serial_number": lamassu_serial(cert.serial_number),
            "status": issued.status,
            "certificate": b64pem(cert),
            "subject": {"common_name": str(names[0].value) if names else ""},
            "issuer": {"common_name": str(issuer_names[0].value) if issuer_names else ""},
            "issuer_metadata": {"id": issued.issuer.id, "serial_number": issued.issuer.serial, "level": 0},
            "valid_from": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
            "valid_to": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
            "is_ca": cert.issuer == cert.subject,
            "type": "MANAGED",
            "metadata": {},
        }
        if issued.revoked_at:
            data["revocation_timestamp"] = issued.revoked_at
            data["revocation_reason"] = issued.revocation_reason
        return data

    def _ca_json(self, ca: Ca) -> dict[str, Any]:
        return {
            "id": ca.id,
            "serial_number": ca.serial,
            "certificate": self._certificate_json(self.certificates[ca.serial]),
            "level": 0,
            "profile_id": "default",
            "metadata": {},
        }


def _details(exc: BaseException) -> str:
    causes = [repr(cause) for cause in getattr(exc, "schema_errors", [])]
    cause = exc.__cause__
    while cause is not None:
        causes.extend(repr(error) for error in getattr(cause, "schema_errors", []))
        causes.append(repr(cause))
        cause = cause.__cause__
    return "; ".join(causes)[:1000]


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"err": message})
