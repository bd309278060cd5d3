"""Credential resolution: config, env, Docker's config.json and real credential-helper executables.

Helpers are real executables written into a temporary directory that is put on the PATH the code
is given; they speak Docker's credential-helper protocol (server URL on stdin, JSON on stdout).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from mirror.registry.credentials import (
    BasicCredential,
    CredentialError,
    Credentials,
    credentials_for,
    env_prefix,
    run_credential_helper,
)
from mirror.settings import RegistrySettings

# A Python helper that serves a JSON store next to it and logs every call.
STORE_HELPER = """#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(__file__)
url = sys.stdin.read()
with open(os.path.join(here, name + ".calls"), "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "url": url}}) + "\\n")
if sys.argv[1:] != ["get"]:
    print("unsupported action"); sys.exit(1)
with open(os.path.join(here, name + ".json")) as f:
    store = json.load(f)
if url not in store:
    print("credentials not found in native keychain"); sys.exit(1)
print(json.dumps({{"ServerURL": url, "Username": store[url][0], "Secret": store[url][1]}}))
"""

# The same protocol in POSIX shell: answers for one server URL only.
SHELL_HELPER = """#!/bin/sh
read -r url
if [ "$url" = "{url}" ]; then
  printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\\n' "$url"
else
  echo "credentials not found in native keychain"
  exit 1
fi
"""


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class Lab:
    """A HOME, a DOCKER_CONFIG directory, a bin directory on PATH, and the env mapping to pass."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.bin = root / "bin"
        self.docker = root / "docker"
        for d in (self.home, self.bin, self.docker):
            d.mkdir()
        self.env: dict[str, str] = {
            "HOME": str(self.home),
            "DOCKER_CONFIG": str(self.docker),
            "PATH": f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin",
        }

    def docker_config(self, data: object) -> Path:
        path = self.docker / "config.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        return path

    def store_helper(self, name: str, store: dict[str, tuple[str, str]]) -> None:
        _write_exe(self.bin / f"docker-credential-{name}", STORE_HELPER.format(python=sys.executable))
        (self.bin / f"docker-credential-{name}.json").write_text(json.dumps(store))

    def calls(self, name: str) -> list[dict]:
        path = self.bin / f"docker-credential-{name}.calls"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def helper(self, name: str, script: str) -> None:
        _write_exe(self.bin / f"docker-credential-{name}", script)

    def resolve(self, host: str, settings: RegistrySettings | None = None, **kwargs) -> Credentials:
        return credentials_for(host, settings or RegistrySettings(), env=self.env, **kwargs)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


# -- resolution order ----------------------------------------------------------------------------


def test_config_wins_over_env_and_docker_config(lab: Lab) -> None:
    lab.env.update({"ACR_MIRROR_REG_EXAMPLE_COM_USERNAME": "envuser", "ACR_MIRROR_REG_EXAMPLE_COM_PASSWORD": "envpw"})
    lab.docker_config({"auths": {"reg.example.com": {"auth": b64("dockeruser:dockerpw")}}})
    creds = lab.resolve("reg.example.com", RegistrySettings(username="cfguser", password="cfgpw"))
    assert creds.source == "config"
    assert creds.basic == BasicCredential("cfguser", "cfgpw")
    assert creds.identity_token is None
    assert creds.kind == "basic"


def test_password_env_is_read_from_the_given_environment(lab: Lab) -> None:
    lab.env["MY_REGISTRY_PW"] = "s3cret"
    creds = lab.resolve("reg.example.com", RegistrySettings(username="u", password_env="MY_REGISTRY_PW"))
    assert creds.basic == BasicCredential("u", "s3cret")
    with pytest.raises(CredentialError, match=r"password_env: environment variable NOT_THERE is not set"):
        lab.resolve("reg.example.com", RegistrySettings(username="u", password_env="NOT_THERE"))


def test_incomplete_config_pair_is_an_error(lab: Lab) -> None:
    with pytest.raises(CredentialError, match="username is set but neither password nor password_env"):
        lab.resolve("reg.example.com", RegistrySettings(username="u"))
    with pytest.raises(CredentialError, match="a password is set but no username"):
        lab.resolve("reg.example.com", RegistrySettings(password="p"))


def test_env_variables_are_named_after_the_host(lab: Lab) -> None:
    assert env_prefix("crazureblue.azurecr.io") == "ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_"
    assert env_prefix("127.0.0.1:5000") == "ACR_MIRROR_127_0_0_1___5000_"
    assert env_prefix("my-reg.example.com") == "ACR_MIRROR_MY__REG_EXAMPLE_COM_"
    assert env_prefix("[::1]:5000") is None  # cannot be named: reads no variables
    lab.env.update({"ACR_MIRROR_127_0_0_1___5000_USERNAME": "envuser", "ACR_MIRROR_127_0_0_1___5000_PASSWORD": "envpw"})
    lab.docker_config({"auths": {"127.0.0.1:5000": {"auth": b64("dockeruser:dockerpw")}}})
    creds = lab.resolve("127.0.0.1:5000")
    assert (creds.source, creds.basic) == ("env", BasicCredential("envuser", "envpw"))
    # another host does not see them
    assert lab.resolve("127.0.0.1:5001").anonymous


def test_env_naming_is_injective_on_host_names(lab: Lab) -> None:
    """Look-alike hosts get different variables; the old, ambiguous name is refused with the new one."""
    hosts = ["crazureblue.azurecr.io", "crazureblue-azurecr.io", "crazureblue.azurecr-io", "crazure-blue.azurecr.io",
             "crazure.blue.azurecr.io", "xn--p1ai.example", "x.n.p1ai.example", "reg.example:5000",
             "reg.example.5000", "reg-example:5000", "a-b-c.io", "a-b.c.io", "a.b-c.io", "a--b.io"]
    assert len({env_prefix(h) for h in hosts}) == len(hosts)
    lab.env.update({"ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_USERNAME": "ci", "ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_PASSWORD": "pw"})
    assert lab.resolve("crazureblue.azurecr.io").basic == BasicCredential("ci", "pw")
    assert lab.resolve("crazureblue-azurecr.io").anonymous  # the look-alike never gets the real password


def test_half_an_env_pair_is_an_error(lab: Lab) -> None:
    lab.env["ACR_MIRROR_REG_EXAMPLE_COM_USERNAME"] = "envuser"
    with pytest.raises(CredentialError, match="ACR_MIRROR_REG_EXAMPLE_COM_PASSWORD is not set"):
        lab.resolve("reg.example.com")


def test_nothing_anywhere_is_anonymous(lab: Lab) -> None:
    creds = lab.resolve("reg.example.com")
    assert creds.anonymous and creds.basic is None and creds.identity_token is None
    assert creds.source == "anonymous"


def test_azurecr_host_without_other_credentials_uses_entra_id(lab: Lab) -> None:
    creds = lab.resolve("crazureblue.azurecr.io")
    assert creds.kind == "entra-id"
    assert creds.source == "Entra ID (DefaultAzureCredential)"
    assert creds.basic is None
    # but docker config for the registry comes first (az acr login stores an identity token)
    lab.docker_config({"auths": {"crazureblue.azurecr.io": {
        "auth": b64("00000000-0000-0000-0000-000000000000:"), "identitytoken": "acr-refresh-token"}}})
    creds = lab.resolve("crazureblue.azurecr.io")
    assert creds.kind == "identity-token" and creds.identity_token == "acr-refresh-token"
    assert creds.basic is None


# -- auth: forces a mode -------------------------------------------------------------------------


def test_auth_anonymous_ignores_every_source(lab: Lab) -> None:
    lab.docker_config({"auths": {"reg.example.com": {"auth": b64("u:p")}}})
    creds = lab.resolve("reg.example.com", RegistrySettings(username="u", password="p", auth="anonymous"))
    assert creds.anonymous


def test_auth_basic_uses_config_or_env_only(lab: Lab) -> None:
    lab.docker_config({"auths": {"reg.example.com": {"auth": b64("u:p")}}})
    with pytest.raises(CredentialError, match=r"auth is basic but there is no username and password"):
        lab.resolve("reg.example.com", RegistrySettings(auth="basic"))
    lab.env.update({"ACR_MIRROR_REG_EXAMPLE_COM_USERNAME": "e", "ACR_MIRROR_REG_EXAMPLE_COM_PASSWORD": "f"})
    assert lab.resolve("reg.example.com", RegistrySettings(auth="basic")).source == "env"


def test_auth_docker_uses_docker_config_only(lab: Lab) -> None:
    settings = RegistrySettings(username="u", password="p", auth="docker")
    with pytest.raises(CredentialError, match=r"auth is docker but .*config.json has no credentials for reg.example.com"):
        lab.resolve("reg.example.com", settings)
    lab.docker_config({"auths": {"reg.example.com": {"auth": b64("du:dp")}}})
    assert lab.resolve("reg.example.com", settings).basic == BasicCredential("du", "dp")


def test_auth_azure_forces_entra_id_on_any_host(lab: Lab) -> None:
    lab.docker_config({"auths": {"registry.contoso.com": {"auth": b64("du:dp")}}})
    creds = lab.resolve("registry.contoso.com", RegistrySettings(auth="azure"))
    assert creds.kind == "entra-id"


# -- Docker's config.json ------------------------------------------------------------------------


def test_docker_config_location_docker_config_then_home(lab: Lab) -> None:
    home_docker = lab.home / ".docker"
    home_docker.mkdir()
    (home_docker / "config.json").write_text(json.dumps({"auths": {"reg.example.com": {"auth": b64("home:pw")}}}))
    lab.docker_config({"auths": {"reg.example.com": {"auth": b64("dc:pw")}}})
    assert lab.resolve("reg.example.com").basic == BasicCredential("dc", "pw")
    del lab.env["DOCKER_CONFIG"]
    assert lab.resolve("reg.example.com").basic == BasicCredential("home", "pw")


def test_auths_variants(lab: Lab) -> None:
    lab.docker_config({"auths": {
        "https://a.example.com/v1/": {"auth": b64("a:pw:with:colons")},
        "b.example.com": {"username": "legacy", "password": "old"},
        "c.example.com": {"auth": b64("c:cpw"), "identitytoken": "c-identity"},
        "d.example.com": {},
        "http://e.example.com:5000": {"auth": b64("e:epw") + "\n"},
    }})
    a = lab.resolve("a.example.com")
    assert a.basic == BasicCredential("a", "pw:with:colons") and a.source == "docker config (auths)"
    assert lab.resolve("b.example.com").basic == BasicCredential("legacy", "old")
    c = lab.resolve("c.example.com")
    assert c.kind == "identity-token" and c.identity_token == "c-identity"
    assert c.basic == BasicCredential("c", "cpw")
    assert lab.resolve("d.example.com").anonymous
    assert lab.resolve("e.example.com:5000").basic == BasicCredential("e", "epw")
    assert lab.resolve("e.example.com").anonymous


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io",
                                 "registry-1.docker.io", "https://index.docker.io/v1"])
@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_key_variants(lab: Lab, key: str, host: str) -> None:
    lab.docker_config({"auths": {key: {"auth": b64("hubuser:hubpw")}}})
    assert lab.resolve(host).basic == BasicCredential("hubuser", "hubpw")


def test_docker_hub_helpers_are_asked_for_the_index_url(lab: Lab) -> None:
    lab.store_helper("hub", {"https://index.docker.io/v1/": ("hubuser", "hubpw")})
    lab.docker_config({"credHelpers": {"docker.io": "hub"}})
    creds = lab.resolve("docker.io")
    assert creds.basic == BasicCredential("hubuser", "hubpw")
    assert creds.source == "docker config (credHelpers hub)"
    assert lab.calls("hub") == [{"args": ["get"], "url": "https://index.docker.io/v1/"}]


def test_bad_docker_config_is_an_error_naming_the_file(lab: Lab) -> None:
    path = lab.docker_config('{"auths": {"reg.example.com": {"auth": "dTpzZWNyZXQtaW4tZmlsZQ=="}},,}')
    with pytest.raises(CredentialError) as info:
        lab.resolve("reg.example.com")
    assert str(path) in str(info.value) and "invalid JSON" in str(info.value)
    assert "dTpzZWNyZXQtaW4tZmlsZQ" not in str(info.value)
    lab.docker_config({"auths": {"reg.example.com": {"auth": "!!not base64!!"}}})
    with pytest.raises(CredentialError, match=r"auths\['reg.example.com'\].auth: not base64 of user:password"):
        lab.resolve("reg.example.com")


# -- credential helpers --------------------------------------------------------------------------


def test_cred_helpers_then_creds_store_then_auths(lab: Lab) -> None:
    lab.store_helper("perhost", {"one.example.com": ("helperuser", "helperpw")})
    lab.store_helper("desktop", {"one.example.com": ("storeuser", "storepw"),
                                 "two.example.com": ("storeuser2", "storepw2")})
    lab.docker_config({
        "credHelpers": {"one.example.com": "perhost", "two.example.com": "perhost"},
        "credsStore": "desktop",
        "auths": {"one.example.com": {}, "two.example.com": {}, "three.example.com": {"auth": b64("fileuser:filepw")}},
    })
    one = lab.resolve("one.example.com")
    assert (one.basic, one.source) == (BasicCredential("helperuser", "helperpw"), "docker config (credHelpers perhost)")
    assert lab.calls("desktop") == []
    # the per-host helper has nothing for two: credsStore is asked next
    two = lab.resolve("two.example.com")
    assert (two.basic, two.source) == (BasicCredential("storeuser2", "storepw2"), "docker config (credsStore desktop)")
    # neither helper has three: the auths entry
    three = lab.resolve("three.example.com")
    assert (three.basic, three.source) == (BasicCredential("fileuser", "filepw"), "docker config (auths)")
    assert [c["url"] for c in lab.calls("perhost")] == ["one.example.com", "two.example.com"]
    assert [c["url"] for c in lab.calls("desktop")] == ["two.example.com", "three.example.com"]
    assert all(c["args"] == ["get"] for c in lab.calls("desktop"))


def test_shell_helper_and_identity_token(lab: Lab) -> None:
    lab.helper("sh", SHELL_HELPER.format(url="reg.example.com", user="shuser", secret="shpw"))
    lab.helper("tok", SHELL_HELPER.format(url="acr.example.com", user="<token>", secret="identity-xyz"))
    lab.docker_config({"credHelpers": {"reg.example.com": "sh", "acr.example.com": "tok", "none.example.com": "sh"}})
    assert lab.resolve("reg.example.com").basic == BasicCredential("shuser", "shpw")
    acr = lab.resolve("acr.example.com")
    assert acr.kind == "identity-token" and acr.basic is None and acr.identity_token == "identity-xyz"
    assert lab.resolve("none.example.com").anonymous


def test_helper_not_found_answer_is_no_credential(lab: Lab) -> None:
    lab.store_helper("empty", {})
    assert run_credential_helper("empty", "reg.example.com", env=lab.env) is None


def test_helper_failure_names_the_helper(lab: Lab) -> None:
    lab.helper("broken", "#!/bin/sh\necho 'error getting credentials - err: exit status 1, out: keyring is locked'\nexit 3\n")
    lab.docker_config({"credHelpers": {"reg.example.com": "broken"}})
    with pytest.raises(CredentialError) as info:
        lab.resolve("reg.example.com")
    message = str(info.value)
    assert message.startswith("asking credential helper docker-credential-broken for reg.example.com: exit status 3")
    assert "keyring is locked" in message


def test_helper_answer_that_is_not_json_is_not_echoed(lab: Lab) -> None:
    lab.helper("garbage", "#!/bin/sh\ncat >/dev/null\necho 'Username=x Secret=planted-garbage-secret'\n")
    with pytest.raises(CredentialError, match="its answer is not JSON") as info:
        run_credential_helper("garbage", "reg.example.com", env=lab.env)
    assert "planted-garbage-secret" not in str(info.value)


@pytest.mark.timeout(60)  # the hang guard: without the kill, the call waits for the child's hour
def test_helper_timeout_kills_it(lab: Lab, tmp_path: Path) -> None:
    # the helper leaves a child holding the pipes: waiting for them to close would wait an hour
    pid_file = tmp_path / "child.pid"
    lab.helper("slow", f"#!/bin/sh\nsleep 3600 &\necho $! > {pid_file}\nwait\n")
    with pytest.raises(CredentialError, match=r"docker-credential-slow .*no answer within 0.5 s"):
        run_credential_helper("slow", "reg.example.com", env=lab.env, timeout=0.5)
    child = int(pid_file.read_text())
    assert not _alive(child), f"the helper's child {child} still runs"


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (killed, not yet reaped by its new parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_missing_helpers(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    # credsStore copied from Docker Desktop, helper not installed here: logged and skipped
    lab.docker_config({"credsStore": "desktop", "auths": {"reg.example.com": {"auth": b64("u:p")}}})
    with caplog.at_level(logging.WARNING):
        assert lab.resolve("reg.example.com").basic == BasicCredential("u", "p")
    assert "docker-credential-desktop not found on PATH" in caplog.text
    # a credHelpers entry names this host: its helper missing is an error
    lab.docker_config({"credHelpers": {"reg.example.com": "gone"}})
    with pytest.raises(CredentialError, match="docker-credential-gone not found on PATH"):
        lab.resolve("reg.example.com")


# -- secrets never leak --------------------------------------------------------------------------

SECRETS = ["planted-config-pw-1", "planted-env-pw-2", "planted-auths-pw-3", "planted-helper-pw-4",
           "planted-identity-5", "planted-store-pw-6", "planted-badjson-7"]


def test_secrets_never_in_repr_errors_or_logs(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lab.env["PLANTED_PW"] = SECRETS[1]
    lab.env.update({"ACR_MIRROR_ENV_EXAMPLE_COM_USERNAME": "envuser", "ACR_MIRROR_ENV_EXAMPLE_COM_PASSWORD": SECRETS[1]})
    lab.store_helper("keyring", {"helper.example.com": ("helperuser", SECRETS[3]),
                                 "token.example.com": ("<token>", SECRETS[4])})
    lab.store_helper("store", {"store.example.com": ("storeuser", SECRETS[5])})
    lab.helper("leaky", f"#!/bin/sh\ncat >/dev/null\necho 'not json {SECRETS[3]}'\n")
    lab.docker_config({
        "credHelpers": {"helper.example.com": "keyring", "token.example.com": "keyring", "leaky.example.com": "leaky"},
        "credsStore": "store",
        "auths": {"auths.example.com": {"auth": b64("authsuser:" + SECRETS[2]), "identitytoken": SECRETS[4]}},
    })
    found = [
        lab.resolve("config.example.com", RegistrySettings(username="cfg", password=SECRETS[0])),
        lab.resolve("config.example.com", RegistrySettings(username="cfg", password_env="PLANTED_PW")),
        lab.resolve("env.example.com"),
        lab.resolve("auths.example.com"),
        lab.resolve("helper.example.com"),
        lab.resolve("token.example.com"),
        lab.resolve("store.example.com"),
    ]
    assert [c.basic.password if c.basic else c.identity_token for c in found] == [
        SECRETS[0], SECRETS[1], SECRETS[1], SECRETS[2], SECRETS[3], SECRETS[4], SECRETS[5]]
    texts = []
    for creds in found:
        texts += [repr(creds), str(creds), repr(creds.basic), str(creds.basic), f"{creds}", f"{creds.basic!r}"]
    assert "username='cfg'" in repr(found[0])  # the user name is fine to show
    errors = []
    with pytest.raises(CredentialError) as info:
        lab.resolve("leaky.example.com")
    errors.append(info.value)
    lab.docker_config('{"auths": {"x": {"password": "' + SECRETS[6] + '"}}')
    with pytest.raises(CredentialError) as info:
        lab.resolve("x")
    errors.append(info.value)
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts.append(caplog.text)
    assert "credentials for config.example.com" in caplog.text  # DEBUG logging did happen
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text)
