"""A fake Microsoft Entra ID for the tests: the v2.0 token endpoint (client secret, client assertion from a
federated token file or a certificate), OpenID discovery, the tenant's key set (JWKS) with RSA keys generated
here, and the instance metadata service. Tokens are RS256 JWTs shaped like Entra's access tokens for Azure
Relay. Written from the OAuth 2.0 / OpenID / RFC 7519 texts, not from any SDK."""
import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

RELAY_AUDIENCE = "https://relay.azure.net"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_bytes(number):
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


class SigningKey:
    def __init__(self):
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]

    def jwk(self):
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "n": b64url(int_bytes(numbers.n)),
                "e": b64url(int_bytes(numbers.e))}

    def public_pem(self):
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)


class FakeEntra:
    def __init__(self, tenant="5b9f3c2a-1111-4a4a-9c9c-0123456789ab", token_lifetime=3600):
        self.tenant = tenant
        self.token_lifetime = token_lifetime
        self.keys = [SigningKey()]
        self.applications = {}    # client id -> {"secret", "oid", "assertion"}
        self.certificates = {}    # client id -> public key of the application's certificate
        self.managed_identity_oid = None
        # When set, the client-credentials token response carries these fields (say {"expires_in": "nan"} or
        # {"expires_on": 1e300}) in place of its `expires_in`: an endpoint answering numbers no token lives by.
        self.expiry_fields = None
        self.requests = []
        self.lock = threading.Lock()
        entra = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                entra.record(self.path)
                entra.handle_get(self)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                entra.record(self.path)
                entra.handle_token(self, {k: v[0] for k, v in form.items()})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def authority(self):
        return "http://127.0.0.1:%d/" % self.port

    @property
    def issuer(self):
        return "%s%s/v2.0" % (self.authority, self.tenant)

    def record(self, path):
        with self.lock:
            self.requests.append(path.split("?")[0])

    def count(self, suffix):
        with self.lock:
            return sum(1 for path in self.requests if path.endswith(suffix))

    def add_application(self, client_id, oid, secret=None, assertion=None):
        self.applications[client_id] = {"secret": secret, "oid": oid, "assertion": assertion}

    def rotate(self):
        """A key rollover: a new signing key, published beside the old one."""
        with self.lock:
            self.keys.insert(0, SigningKey())

    def token(self, oid, appid="app", audience=RELAY_AUDIENCE, tenant=None, issuer=None, lifetime=None,
              not_before=None, key=None, algorithm="RS256", groups=None, claims_override=None):
        now = int(time.time())
        claims = {"aud": audience, "iss": issuer or self.issuer, "tid": tenant or self.tenant, "oid": oid,
                  "azp": appid, "iat": now, "nbf": not_before if not_before is not None else now - 5,
                  "exp": now + (lifetime if lifetime is not None else self.token_lifetime), "ver": "2.0"}
        if groups:
            claims["groups"] = groups
        # Claims put as given (any JSON value: a huge number, a string where a number belongs), still signed.
        claims.update(claims_override or {})
        key = key or self.keys[0]
        header = {"typ": "JWT", "alg": algorithm, "kid": key.kid}
        signing_input = (b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())).encode()
        if algorithm == "RS256":
            signature = key.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif algorithm == "HS256":
            # The classic forgery: the public key as an HMAC secret.
            signature = hmac.new(key.public_pem(), signing_input, hashlib.sha256).digest()
        else:
            signature = b""
        return signing_input.decode() + "." + b64url(signature)

    def respond(self, handler, status, body):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle_get(self, handler):
        path, _, query = handler.path.partition("?")
        if path == "/%s/v2.0/.well-known/openid-configuration" % self.tenant:
            return self.respond(handler, 200, {
                "issuer": self.issuer, "jwks_uri": "%s%s/discovery/v2.0/keys" % (self.authority, self.tenant),
                "token_endpoint": "%s%s/oauth2/v2.0/token" % (self.authority, self.tenant)})
        if path == "/%s/discovery/v2.0/keys" % self.tenant:
            with self.lock:
                keys = [key.jwk() for key in self.keys]
            return self.respond(handler, 200, {"keys": keys})
        if path == "/msi/token":
            params = urllib.parse.parse_qs(query)
            if handler.headers.get("X-IDENTITY-HEADER") != "app-service-secret" or self.managed_identity_oid is None:
                return self.respond(handler, 401, {"error": "unauthorized"})
            if params.get("resource") != [RELAY_AUDIENCE] or params.get("api-version") != ["2019-08-01"]:
                return self.respond(handler, 400, {"error": "invalid_request"})
            token = self.token(self.managed_identity_oid, appid="app-service")
            return self.respond(handler, 200, {"access_token": token, "expires_on": str(int(time.time()) +
                                               self.token_lifetime), "resource": RELAY_AUDIENCE})
        if path == "/metadata/identity/oauth2/token":
            params = urllib.parse.parse_qs(query)
            if handler.headers.get("Metadata") != "true" or self.managed_identity_oid is None:
                return self.respond(handler, 400, {"error": "invalid_request"})
            if params.get("resource") != [RELAY_AUDIENCE]:
                return self.respond(handler, 400, {"error": "invalid_resource", "got": params.get("resource")})
            token = self.token(self.managed_identity_oid, appid="managed")
            return self.respond(handler, 200, {"access_token": token, "expires_on": str(int(time.time()) +
                                               self.token_lifetime), "token_type": "Bearer"})
        self.respond(handler, 404, {"error": "not_found"})

    def handle_token(self, handler, form):
        if handler.path != "/%s/oauth2/v2.0/token" % self.tenant:
            return self.respond(handler, 400, {"error": "invalid_tenant"})
        if form.get("grant_type") != "client_credentials" or form.get("scope") != RELAY_AUDIENCE + "/.default":
            return self.respond(handler, 400, {"error": "invalid_scope", "scope": form.get("scope")})
        application = self.applications.get(form.get("client_id"))
        if application is None:
            return self.respond(handler, 400, {"error": "unauthorized_client"})
        if "client_secret" in form:
            valid = application["secret"] is not None and form["client_secret"] == application["secret"]
        elif form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            valid = self.assertion_valid(form.get("client_id"), form.get("client_assertion", ""), application)
        else:
            valid = False
        if not valid:
            return self.respond(handler, 401, {"error": "invalid_client",
                                               "error_description": "AADSTS7000215: Invalid client secret provided."})
        token = self.token(application["oid"], appid=form["client_id"])
        expiry = self.expiry_fields
        if expiry is None:
            expiry = {"expires_in": self.token_lifetime}
        self.respond(handler, 200, dict({"token_type": "Bearer", "access_token": token}, **expiry))

    def assertion_valid(self, client_id, assertion, application):
        if application["assertion"] is not None:
            return assertion == application["assertion"]
        public_key = self.certificates.get(client_id)
        if public_key is None:
            return False
        header, claims, signature = assertion.split(".")
        try:
            public_key.verify(b64url_decode(signature), (header + "." + claims).encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except Exception:
            return False
        body = json.loads(b64url_decode(claims))
        return (body.get("iss") == client_id and body.get("sub") == client_id
                and body.get("aud") == "%s%s/oauth2/v2.0/token" % (self.authority, self.tenant)
                and body.get("exp", 0) > time.time())

    def close(self):
        self.server.shutdown()
        self.server.server_close()
