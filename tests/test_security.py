"""Trust, through real servers on loopback: API keys and roles, rate limits, audit lines,
TLS and mutual TLS (a throw-away CA made here), Redis over TLS, the bind address, the
start-up refusals, and the drain window of a graceful stop."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devtools.redis_server import free_port
from omnirec.v1 import identity_pb2 as ipb
from omnirec.v1 import profiles_pb2 as ppb
from omnirec.v1 import profiles_pb2_grpc as ppb_grpc
from omnirec.v1 import recommender_pb2 as pb
from omnirec.v1 import recommender_pb2_grpc as pb_grpc
from service.__main__ import main as service_main
from service.access import KeyRing, hash_key, key_entry, new_key
from service.api.security import server_security
from service.api.server import build_server
from service.config import Settings, feature_store, load_settings
from service.errors import ConfigError
from service.registry import ModelRegistry
from service.store import FeatureStore
from service.store.plans import command, connect
from tests.conftest import deployment_env, publish_log

PREFIX = "sec"
EMAIL = "Grace.Hopper+Audit@Example.org"
PHONE = "+49 170 9876 5432"

#: Every RPC served today and the role that allows it (DESIGN.md, "Auth").
METHOD_ROLES = {
    "/omnirec.v1.Recommender/Recommend": "recommend",
    "/omnirec.v1.Recommender/SimilarItems": "recommend",
    "/omnirec.v1.Recommender/Rank": "recommend",
    "/omnirec.v1.Recommender/TrackEvents": "track",
    "/omnirec.v1.Recommender/UpsertItems": "track",
    "/omnirec.v1.Engagement/PredictSendTime": "engagement",
    "/omnirec.v1.Engagement/RankChannels": "engagement",
    "/omnirec.v1.Profiles/GetProfile": "profiles:read",
    "/omnirec.v1.Profiles/LinkIdentities": "profiles:admin",
    "/omnirec.v1.Profiles/ForgetUser": "profiles:admin",
    "/omnirec.v1.Campaigns/Audience": "campaigns",
}
#: Key name → roles (and a rate for one) in the module's keys file.
KEYS = {
    "web": {"roles": ["recommend"]},
    "tracker": {"roles": ["track"]},
    "mailer": {"roles": ["engagement"]},
    "planner": {"roles": ["campaigns"]},
    "clerk": {"roles": ["profiles:read"]},
    "dpo": {"roles": ["profiles:admin"]},
    "ops": {"roles": ["admin"]},
    "shop": {"roles": ["recommend", "track"]},
    "throttled": {"roles": ["recommend"], "calls_per_second": 2},
}
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


# --- a throw-away PKI ----------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A client certificate signed by another CA."""
    stranger_key: Path

    def read(self, *paths: Path) -> list[bytes]:
        return [p.read_bytes() for p in paths]


def _issue(subject, issuer=None, *, ca=False, server=False):
    """A certificate and key for ``subject``, signed by ``issuer`` (cert, key) or itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_cert.subject if signer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
    return builder.sign(signer_key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert, key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("omnirec test CA", ca=True)
    other_ca = _issue("someone else's CA", ca=True)
    ca_path, _ = _write(folder, "ca", *ca)
    server = _write(folder, "server", *_issue("localhost", ca, server=True))
    client = _write(folder, "client", *_issue("web client", ca))
    stranger = _write(folder, "stranger", *_issue("stranger", other_ca))
    return Pki(ca_path, *server, *client, *stranger)


# --- servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(trained) -> Settings:
    return replace(trained.settings, key_prefix=PREFIX, port=0, host="127.0.0.1")


@pytest.fixture(scope="module")
def model(settings):
    return ModelRegistry(settings).load_alias("champion")


@pytest.fixture(scope="module")
def store(settings, synthetic) -> FeatureStore:
    store = feature_store(settings)
    publish_log(store, synthetic)
    return store


@pytest.fixture(scope="module")
def user(truth) -> str:
    return sorted(truth["users"])[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A keys file with :data:`KEYS` (hashes only) and the raw keys by name."""
    raw = {name: new_key() for name in KEYS}
    entries = [{**key_entry(name, KEYS[name]["roles"], raw[name]), **KEYS[name]} for name in KEYS]
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps({"keys": entries}))
    return path, raw


@contextlib.contextmanager
def serving(settings: Settings, model, store: FeatureStore):
    running = build_server(settings, model, store)
    try:
        yield running
    finally:
        running.stop(grace=1)


@pytest.fixture(scope="module")
def keyed(settings, model, store, keys):
    """A server with the module's keys file."""
    with (
        serving(replace(settings, api_keys_file=str(keys[0])), model, store) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield channel


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def raw_call(channel: grpc.Channel, method: str, metadata=()) -> grpc.StatusCode:
    """Call ``method`` with an empty request (bytes in, bytes out): the status only."""
    call = channel.unary_unary(method)
    try:
        call(b"", metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def code_of(fn, *args, **kwargs) -> grpc.StatusCode:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# --- 1. keys and roles through a real server -----------------------------------------


@pytest.mark.integration
def test_no_key_or_a_bad_key_is_unauthenticated(keyed, keys, user):
    stub = pb_grpc.RecommenderStub(keyed)
    request = pb.RecommendRequest(user_id=user, limit=3)
    web = keys[1]["web"]
    for metadata in [
        (),
        bearer("omk_not-a-key"),
        bearer(""),
        (("authorization", f"Basic {web}"),),  # a good key under the wrong scheme
        (("x-api-key", web),),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(request, metadata=metadata, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "authorization: Bearer" in err.value.details()
    assert len(stub.Recommend(request, metadata=bearer(web), timeout=5).items) == 3


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in KEYS if n != "throttled"])
def test_each_key_reaches_exactly_the_rpcs_of_its_roles(keyed, keys, name):
    roles = set(KEYS[name]["roles"])
    for method, role in METHOD_ROLES.items():
        code = raw_call(keyed, method, bearer(keys[1][name]))
        if role in roles or "admin" in roles:
            # Past the guard: an empty request is answered (OK or INVALID_ARGUMENT).
            assert code not in REFUSED, (name, method, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (name, method, code)
    assert raw_call(keyed, "/omnirec.v1.Recommender/NoSuchMethod", bearer(keys[1][name])) == (
        grpc.StatusCode.UNIMPLEMENTED
    )


@pytest.mark.integration
def test_health_answers_without_a_key_and_reflection_needs_any_valid_one(keyed, keys):
    health = health_pb2_grpc.HealthStub(keyed)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = health.Check(
        health_pb2.HealthCheckRequest(service="omnirec.v1.Recommender"),
        metadata=bearer("omk_wrong"),
        timeout=5,
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def services(metadata):
        stub = reflection_pb2_grpc.ServerReflectionStub(keyed)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata,
            timeout=5,
        )
        return {s.name for r in replies for s in r.list_services_response.service}

    for metadata in [(), bearer("omk_wrong")]:
        with pytest.raises(grpc.RpcError) as err:
            services(metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The key with the narrowest role (engagement only) may still describe the API.
    assert "omnirec.v1.Profiles" in services(bearer(keys[1]["mailer"]))


@pytest.mark.integration
def test_a_key_over_its_calls_per_second_is_resource_exhausted(keyed, keys, user):
    stub = pb_grpc.RecommenderStub(keyed)
    request = pb.RecommendRequest(user_id=user, limit=3)
    codes = [code_of(stub.Recommend, request, metadata=bearer(keys[1]["throttled"]), timeout=5)]
    codes += [
        code_of(stub.Recommend, request, metadata=bearer(keys[1]["throttled"]), timeout=5)
        for _ in range(5)
    ]
    assert codes[:2] == [grpc.StatusCode.OK] * 2  # a burst of one second's worth
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:]
    # Other keys have buckets of their own.
    assert code_of(stub.Recommend, request, metadata=bearer(keys[1]["web"]), timeout=5) == (
        grpc.StatusCode.OK
    )
    time.sleep(0.6)  # 2 calls/s: one token back
    assert code_of(stub.Recommend, request, metadata=bearer(keys[1]["throttled"]), timeout=5) == (
        grpc.StatusCode.OK
    )


@pytest.mark.integration
def test_raw_keys_are_never_logged_and_the_keys_file_holds_only_hashes(keyed, keys, user, caplog):
    caplog.set_level(logging.DEBUG)
    path, raw = keys
    stub = pb_grpc.RecommenderStub(keyed)
    wrong = "omk_" + "x" * 43
    request = pb.RecommendRequest(user_id=user, limit=3)
    for metadata in [bearer(raw["web"]), bearer(raw["clerk"]), bearer(wrong)]:
        code_of(stub.Recommend, request, metadata=metadata, timeout=5)
    for _ in range(4):
        code_of(stub.Recommend, request, metadata=bearer(raw["throttled"]), timeout=5)
    raw_call(keyed, "/omnirec.v1.Profiles/ForgetUser", bearer(raw["web"]))
    ppb_grpc.ProfilesStub(keyed).GetProfile(
        ppb.GetProfileRequest(identifier=ipb.Identifier(kind="user_id", value=user)),
        metadata=bearer(raw["clerk"]),
        timeout=5,
    )
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "audit key=clerk rpc=GetProfile" in logged  # keys are named by name
    text = path.read_text()
    for key in [*raw.values(), wrong]:
        assert key not in logged
        assert key not in text
    for entry in json.loads(text)["keys"]:
        assert entry["sha256"] == hash_key(raw[entry["name"]])


# --- 2. keys files and make-key --------------------------------------------------------

GOOD = "a" * 64


@pytest.mark.parametrize(
    "data, fragment",
    [
        ([], 'needs {"keys": [...]}'),
        ({"keys": []}, 'needs {"keys": [...]}'),
        ({"keys": ["web"]}, "keys[0] is not an object"),
        ({"keys": [{"name": "we b", "sha256": GOOD, "roles": ["recommend"]}]}, "keys[0].name"),
        ({"keys": [{"name": "web", "sha256": "abc", "roles": ["recommend"]}]}, "keys[0].sha256"),
        ({"keys": [{"name": "web", "key": "omk_x", "roles": ["recommend"]}]}, "'key'"),
        ({"keys": [{"name": "web", "sha256": GOOD, "roles": []}]}, "keys[0].roles"),
        ({"keys": [{"name": "web", "sha256": GOOD, "roles": ["root"]}]}, "unknown 'root'"),
        ({"keys": [{"name": "web", "sha256": GOOD, "roles": [["admin"]]}]}, "keys[0].roles"),
        (
            {"keys": [{"name": "web", "sha256": GOOD, "roles": ["track"], "calls_per_sec": 5}]},
            "unknown field 'calls_per_sec'",
        ),
        (
            {"keys": [{"name": "w", "sha256": GOOD, "roles": ["track"], "calls_per_second": -1}]},
            "keys[0].calls_per_second",
        ),
        (
            {
                "keys": [
                    {"name": "web", "sha256": GOOD, "roles": ["track"]},
                    {"name": "app", "sha256": GOOD.upper(), "roles": ["track"]},
                ]
            },
            "keys[1]: duplicate",
        ),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_entry_and_field(tmp_path, data, fragment):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        KeyRing.load(path)
    message = str(err.value)
    assert message.startswith(f"OMNIREC_API_KEYS_FILE={str(path)!r}")
    assert fragment in message and "\n" not in message


def test_an_unreadable_keys_file_is_one_line(tmp_path):
    for path, fragment in [
        (tmp_path / "missing.json", "no such file"),
        (tmp_path, "cannot read it"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as err:
            KeyRing.load(path)
        assert "\n" not in str(err.value)
    (tmp_path / "bad.json").write_text("{'keys': ")
    with pytest.raises(ConfigError, match="not JSON") as err:
        KeyRing.load(tmp_path / "bad.json")
    assert "\n" not in str(err.value)


def test_make_key_prints_a_key_and_its_entry(capsys):
    assert service_main(["make-key", "--name", "web", "--roles", "recommend, track"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[-1]
    entry = json.loads(out[1].split(": ", 1)[1])
    assert key.startswith("omk_") and len(key) > 40
    assert entry == {"name": "web", "sha256": hash_key(key), "roles": ["recommend", "track"]}
    ring = KeyRing.from_data({"keys": [entry]})
    assert ring.find(key).name == "web" and ring.find(key + "x") is None


def test_make_key_adds_to_a_file_readable_by_its_owner_only(tmp_path, capsys):
    path = tmp_path / "keys.json"
    made = {}
    for name, roles in [("web", "recommend"), ("ops", "admin"), ("web", "recommend,track")]:
        assert (
            service_main(["make-key", "--name", name, "--roles", roles, "--file", str(path)]) == 0
        )
        made[name] = capsys.readouterr().out.splitlines()[0].rsplit(" ", 1)[-1]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing.load(path)
    # A second key of one name replaces the first (rotation); the file holds hashes only.
    assert sorted(k.name for k in ring.keys) == ["ops", "web"]
    assert ring.find(made["web"]).roles == {"recommend", "track"}
    assert ring.find(made["ops"]).roles == {"admin"}
    assert not any(key in path.read_text() for key in made.values())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--name", "web", "--roles", "recommend,root"], "--roles='recommend,root': unknown role"),
        (["--name", "web", "--roles", " , "], "no role"),
        (["--name", "web team", "--roles", "recommend"], "--name='web team'"),
    ],
)
def test_make_key_refuses_what_the_server_would_refuse(tmp_path, capsys, args, fragment):
    path = tmp_path / "keys.json"
    assert service_main(["make-key", *args, "--file", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnirec make-key: error: ")
    assert fragment in lines[0]
    assert captured.out == "" and not path.exists()


def test_make_key_refuses_to_extend_a_broken_keys_file(tmp_path, capsys):
    path = tmp_path / "keys.json"
    path.write_text("not json")
    assert service_main(["make-key", "--name", "web", "--roles", "admin", "--file", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--file=" in lines[0] and "not JSON" in lines[0]
    assert path.read_text() == "not json"


# --- 3. audit lines --------------------------------------------------------------------


@pytest.mark.integration
def test_identity_reads_and_changes_leave_an_audit_line_without_raw_identifiers(
    keyed, keys, caplog
):
    caplog.set_level(logging.INFO)
    raw = keys[1]
    profiles = ppb_grpc.ProfilesStub(keyed)
    email = ipb.Identifier(kind="email", value=EMAIL)
    phone = ipb.Identifier(kind="phone", value=PHONE)
    account = ipb.Identifier(kind="user_id", value="sec-audit-1")
    profiles.LinkIdentities(
        ppb.LinkIdentitiesRequest(identifiers=[account, email, phone]),
        metadata=bearer(raw["dpo"]),
        timeout=5,
    )
    found = profiles.GetProfile(
        ppb.GetProfileRequest(identifier=email), metadata=bearer(raw["clerk"]), timeout=5
    )
    assert found.person_id == "sec-audit-1"
    profiles.ForgetUser(
        ppb.ForgetUserRequest(identifier=phone), metadata=bearer(raw["dpo"]), timeout=5
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "omnirec.audit"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("audit key=dpo rpc=LinkIdentities person=user_id:sec-audit-1,")
    assert lines[1].startswith("audit key=clerk rpc=GetProfile person=email:h:")
    assert lines[2].startswith("audit key=dpo rpc=ForgetUser person=phone:h:")
    everything = caplog.text
    for value in [EMAIL, EMAIL.lower(), "Grace.Hopper", PHONE, "4917098765432", "9876 5432"]:
        assert value not in everything


# --- 4. TLS ------------------------------------------------------------------------------


def tls_client(pki: Pki, *, ca: Path | None = None, cert: tuple[Path, Path] | None = None):
    root = (ca or pki.ca).read_bytes()
    if cert is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    chain, key = cert
    return grpc.ssl_channel_credentials(root, key.read_bytes(), chain.read_bytes())


def recommend_code(target: str, credentials, user: str) -> grpc.StatusCode:
    with (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    ) as channel:
        request = pb.RecommendRequest(user_id=user, limit=3)
        return code_of(pb_grpc.RecommenderStub(channel).Recommend, request, timeout=5)


@pytest.mark.integration
def test_a_tls_server_answers_clients_that_trust_its_ca_only(settings, model, store, pki, user):
    tls = replace(settings, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with serving(tls, model, store) as running:
        target = f"127.0.0.1:{running.port}"
        assert recommend_code(target, tls_client(pki), user) == grpc.StatusCode.OK
        assert recommend_code(f"localhost:{running.port}", tls_client(pki), user) == (
            grpc.StatusCode.OK
        )
        assert recommend_code(target, None, user) == grpc.StatusCode.UNAVAILABLE  # plaintext
        # A client that trusts another CA refuses the server's certificate.
        assert recommend_code(target, tls_client(pki, ca=pki.stranger_cert), user) == (
            grpc.StatusCode.UNAVAILABLE
        )


@pytest.mark.integration
def test_with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in(
    settings, model, store, pki, user
):
    mtls = replace(
        settings,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    with serving(mtls, model, store) as running:
        target = f"127.0.0.1:{running.port}"
        signed = (pki.client_cert, pki.client_key)
        assert recommend_code(target, tls_client(pki, cert=signed), user) == grpc.StatusCode.OK
        assert recommend_code(target, tls_client(pki), user) == grpc.StatusCode.UNAVAILABLE
        stranger = (pki.stranger_cert, pki.stranger_key)
        assert recommend_code(target, tls_client(pki, cert=stranger), user) == (
            grpc.StatusCode.UNAVAILABLE
        )


def test_tls_settings_that_cannot_work_are_one_line(pki, tmp_path):
    assert server_security(Settings()).credentials is None
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="OMNIREC_TLS_KEY") as err:
        load_settings({"OMNIREC_TLS_CERT": str(pki.server_cert)})
    messages = [str(err.value)]
    cert, key = str(pki.server_cert), str(pki.server_key)
    for overrides, fragment in [
        ({"tls_cert": cert}, "OMNIREC_TLS_CERT needs OMNIREC_TLS_KEY"),
        ({"tls_key": key}, "OMNIREC_TLS_KEY needs OMNIREC_TLS_CERT"),
        ({"tls_cert": cert, "tls_key": missing}, "OMNIREC_TLS_KEY='/"),
        ({"tls_cert": missing, "tls_key": key}, "cannot read it"),
        ({"tls_cert": str(text), "tls_key": key}, "not a PEM file"),
        ({"tls_cert": cert, "tls_key": str(pki.client_key)}, "not a certificate and its"),
        ({"tls_cert": cert, "tls_key": key, "tls_client_ca": str(text)}, "not a PEM file"),
        ({"tls_cert": cert, "tls_key": key, "tls_client_ca": key}, "not a PEM CA bundle"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as err:
            server_security(replace(Settings(), **overrides))
        messages.append(str(err.value))
    assert all("\n" not in m for m in messages)


# --- 5. Redis over TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(pki, tmp_path_factory):
    """A redis-server speaking TLS only (no plaintext port), requiring client
    certificates signed by the test CA. Yields its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(pki.server_cert),
            "--tls-key-file",
            str(pki.server_key),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("tls-redis")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = process.stdout.read()
                if "tls" in output.lower():
                    pytest.skip(f"redis-server here has no TLS support: {output.splitlines()[-1]}")
                pytest.fail(f"redis-server with TLS did not start: {output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                pytest.fail("redis-server with TLS did not open its port")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_recommend_works_over_a_redis_reached_by_rediss(
    settings, model, pki, tls_redis, synthetic, user, tmp_path
):
    # redis-py's from_url passes unknown query parameters through as connection
    # arguments: the CA, and the client certificate when Redis asks for one.
    base = f"rediss://127.0.0.1:{tls_redis}/0"
    url = (
        f"{base}?ssl_ca_certs={pki.ca}&ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}"
    )
    over_tls = replace(
        load_settings({"REDIS_URL": url}, identity_secret=settings.identity_secret),
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        key_prefix="sectls",
        port=0,
        host="127.0.0.1",
    )
    store = feature_store(over_tls)
    assert store.ping()
    publish_log(store, synthetic)
    with (
        serving(over_tls, model, store) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(user_id=user, limit=5), timeout=5
        )
    assert len(reply.items) == 5
    assert any(not r.reason.startswith("popular") for r in reply.items)  # features were read
    store.close()
    # Without the CA the server's certificate is not trusted; without a client
    # certificate this Redis hangs up.
    for partial in [f"{base}?ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}", base]:
        assert not FeatureStore(connect(partial, timeout_seconds=2), "sectls").ping()
    plain = redis.Redis(host="127.0.0.1", port=tls_redis, socket_timeout=2)
    with pytest.raises(redis.RedisError):
        plain.ping()


# --- 6. bind address and start-up --------------------------------------------------------


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, a route is chosen
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.integration
def test_without_keys_the_server_binds_loopback_only_and_says_so(
    settings, model, store, user, caplog
):
    caplog.set_level(logging.INFO)
    anonymous = replace(settings, host="")
    assert server_security(anonymous).host == "127.0.0.1"
    with serving(anonymous, model, store) as running:
        started = [r.getMessage() for r in caplog.records if "omnirec serving" in r.getMessage()]
        assert "no API keys (anonymous), listening on 127.0.0.1 (loopback only)" in started[-1]
        assert recommend_code(f"127.0.0.1:{running.port}", None, user) == grpc.StatusCode.OK
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, running.port), 2).close()


def test_a_non_loopback_address_without_keys_needs_allow_anonymous(tmp_path):
    with pytest.raises(ConfigError) as err:
        server_security(load_settings({"OMNIREC_HOST": "0.0.0.0"}))
    message = str(err.value)
    assert message.startswith("OMNIREC_HOST='0.0.0.0' without OMNIREC_API_KEYS_FILE")
    assert "OMNIREC_ALLOW_ANONYMOUS=true" in message and "\n" not in message
    for host in ["[::]", "10.1.2.3", "omnirec.internal"]:
        with pytest.raises(ConfigError):
            server_security(replace(Settings(), host=host))
    allowed = load_settings({"OMNIREC_HOST": "0.0.0.0", "OMNIREC_ALLOW_ANONYMOUS": "true"})
    assert server_security(allowed).host == "0.0.0.0"
    for host in ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]:
        assert server_security(replace(Settings(), host=host)).host == host
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [key_entry("web", ["recommend"], new_key())]}))
    assert server_security(replace(Settings(), api_keys_file=str(path))).host == "[::]"


def _serve_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIREC_")}
    return {**env, **deployment_env(settings), **extra}


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_serve_on_a_busy_port_exits_2_with_one_line(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(_serve_env(settings), "--port", str(port))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"omnirec serve: error: cannot bind 127.0.0.1:{port}"), last
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_serve_refuses_a_public_address_without_keys_before_loading_anything(settings):
    started = time.monotonic()
    done = _serve(_serve_env(settings, OMNIREC_HOST="0.0.0.0"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnirec serve: error: OMNIREC_HOST='0.0.0.0'")
    assert time.monotonic() - started < 30


# --- 7. graceful drain -------------------------------------------------------------------


class SlowForOne(FeatureStore):
    """The real store, but reading the person ``user_id:slow`` first waits a second on
    Redis (a blocking pop of a list nobody fills): a call surely in flight."""

    def person_plan(self, token, *args, **kwargs):
        if token == "user_id:slow":
            yield [command("blpop", [f"{self.prefix}:never"], timeout=1)]
        return (yield from super().person_plan(token, *args, **kwargs))


@pytest.mark.integration
def test_a_drain_keeps_serving_while_health_says_not_serving(settings, model, store, user):
    slow_store = SlowForOne(connect(settings.redis_url, timeout_seconds=5), PREFIX)
    running = build_server(settings, model, slow_store)
    target = f"127.0.0.1:{running.port}"
    drain = 1.5
    results: list[tuple[float, grpc.StatusCode]] = []
    done = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            while not done.is_set():
                code = code_of(stub.Recommend, pb.RecommendRequest(user_id=user), timeout=5)
                results.append((time.monotonic(), code))
                if code != grpc.StatusCode.OK:
                    return

    slow: dict[str, grpc.StatusCode] = {}

    def slow_call() -> None:
        with grpc.insecure_channel(target) as channel:
            request = pb.RecommendRequest(user_id="slow", limit=3)
            slow["code"] = code_of(pb_grpc.RecommenderStub(channel).Recommend, request, timeout=8)

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving_status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert serving_status == health_pb2.HealthCheckResponse.SERVING
        clients = [threading.Thread(target=client) for _ in range(3)]
        for t in clients:
            t.start()
        time.sleep(0.3)
        began = time.monotonic()
        stopper = threading.Thread(target=running.stop, args=(5,), kwargs={"drain": drain})
        stopper.start()
        time.sleep(0.2)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Started 0.5 s before the drain ends, it takes a second: in flight at stop.
        time.sleep(drain - 0.7)
        late = threading.Thread(target=slow_call)
        late.start()
        stopper.join(timeout=15)
        stopped = time.monotonic()
        done.set()
        late.join(timeout=10)
        for t in clients:
            t.join(timeout=10)
    assert slow["code"] == grpc.StatusCode.OK
    during = [code for at, code in results if began < at < began + drain - 0.1]
    assert len(during) >= 5 and set(during) == {grpc.StatusCode.OK}
    codes = {code for _, code in results}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes  # none CANCELLED
    refused = [at for at, code in results if code != grpc.StatusCode.OK]
    assert all(at >= began + drain for at in refused)
    assert stopped - began >= drain + 0.4  # stop waited for the slow call
