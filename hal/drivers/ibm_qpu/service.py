"""IBM Quantum credentials and job handling: find an account, connect, submit, wait, retry, cancel.

Credentials come from the standard qiskit-ibm-runtime sources, in its order: the environment
(``QISKIT_IBM_TOKEN``, with ``QISKIT_IBM_CHANNEL`` / ``QISKIT_IBM_INSTANCE`` / ``QISKIT_IBM_URL``), then an
account saved with ``QiskitRuntimeService.save_account``. Finding them reads the environment and the
account file only: with no credentials there is no network call at all.

The token is a secret: this module never prints or logs it, and every message that leaves it (errors,
reasons, logs) passes through ``redact`` so that a library error quoting the token cannot leak it.
Errors raised from library exceptions are raised ``from None`` so the original text (which may quote
the token) is not chained into the traceback either.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.errors import DeviceFailure, DeviceUnavailable

logger = logging.getLogger(__name__)

TOKEN_VARIABLE = "QISKIT_IBM_TOKEN"
SETUP_FIX = (
    "set QISKIT_IBM_TOKEN (and QISKIT_IBM_INSTANCE) in the environment, or save an account once with "
    "QiskitRuntimeService.save_account(channel='ibm_quantum_platform', token=..., instance=...)"
)
REDACTED = "<redacted>"
#: Where qiskit-ibm-runtime saves accounts (``_DEFAULT_ACCOUNT_CONFIG_JSON_FILE`` in qiskit_ibm_runtime.accounts.management).
ACCOUNT_FILE = "~/.qiskit/qiskit-ibm.json"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (4 characters or longer) replaced by ``<redacted>``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class Credentials:
    """Where IBM Quantum credentials were found. Holds no token: only where it is and what it is for."""

    source: str
    channel: str | None = None
    instance: str | None = None
    account_name: str | None = None


def find_credentials(environ: Mapping[str, str] | None = None, saved_accounts: Callable[[], dict] | None = None) -> Credentials | None:
    """The credentials qiskit-ibm-runtime would use, or None; reads the environment and the account file, no network.

    ``saved_accounts`` defaults to reading qiskit-ibm-runtime's account file (``~/.qiskit/qiskit-ibm.json``,
    what ``QiskitRuntimeService.saved_accounts()`` reads) directly, so that probing does not import the qiskit
    stack.
    """
    env = os.environ if environ is None else environ
    if env.get(TOKEN_VARIABLE):
        return Credentials(f"environment variable {TOKEN_VARIABLE}", env.get("QISKIT_IBM_CHANNEL"), env.get("QISKIT_IBM_INSTANCE"))
    if saved_accounts is None:
        saved_accounts = read_account_file
    try:
        accounts = saved_accounts() or {}
    except Exception as exc:  # noqa: BLE001 - an unreadable account file is reported as "no credentials", with why
        logger.warning("could not read saved IBM Quantum accounts: %s", type(exc).__name__)
        return None
    if not accounts:
        return None
    name = next((n for n, a in accounts.items() if a.get("is_default_account")), next(iter(accounts)))
    account = accounts[name]
    return Credentials("saved account", account.get("channel"), account.get("instance"), name)


def read_account_file() -> dict:
    """Accounts saved by ``QiskitRuntimeService.save_account`` (name -> account dict), {} when there is no file."""
    path = Path(os.path.expanduser(ACCOUNT_FILE))
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _secrets_of(service: Any) -> list[str]:
    """The token a connected service holds (to redact it from messages); empty if it holds none we can see."""
    secrets = []
    env_token = os.environ.get(TOKEN_VARIABLE)
    if env_token:
        secrets.append(env_token)
    account = getattr(service, "_account", None)
    token = getattr(account, "token", None)
    if isinstance(token, str):
        secrets.append(token)
    return secrets


@dataclass
class Connection:
    """A connected IBM Quantum service (real, or a stand-in with the same methods in tests) and its secrets."""

    service: Any
    credentials: Credentials
    secrets: list[str] = field(default_factory=list)

    def backend_names(self) -> list[str]:
        """Names of the operational QPUs this account can use (one network call)."""
        try:
            return sorted(b.name for b in self.service.backends(simulator=False, operational=True))
        except Exception as exc:  # noqa: BLE001 - a library error of any type is reported, redacted
            raise DeviceUnavailable("ibm_qpu:*", redact(f"listing IBM Quantum backends failed ({type(exc).__name__}: {exc})", self.secrets), "check the network and the account's instance") from None

    def backend(self, name: str) -> Any:
        """The backend object for ``name`` (one network call)."""
        try:
            return self.service.backend(name)
        except Exception as exc:  # noqa: BLE001 - a library error of any type is reported, redacted
            raise DeviceUnavailable(f"ibm_qpu:{name}", redact(f"IBM Quantum has no backend {name!r} for this account ({type(exc).__name__}: {exc})", self.secrets), "pick one of `hal devices --all`") from None


def connect(credentials: Credentials, service_factory: Callable[..., Any] | None = None) -> Connection:
    """Open the IBM Quantum service for ``credentials`` (a network call); errors name the source, never the token."""
    if service_factory is None:
        from qiskit_ibm_runtime import QiskitRuntimeService

        service_factory = QiskitRuntimeService
    kwargs = {"name": credentials.account_name} if credentials.account_name else {}
    try:
        service = service_factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a library error of any type is reported, redacted
        secrets = [os.environ.get(TOKEN_VARIABLE, "")]
        raise DeviceUnavailable("ibm_qpu:*", redact(f"connecting to IBM Quantum with the {credentials.source} failed ({type(exc).__name__}: {exc})", secrets), SETUP_FIX) from None
    return Connection(service, credentials, _secrets_of(service))


# --------------------------------------------------------------------------- jobs


def is_transient(exc: BaseException) -> bool:
    """Whether a submission error is worth retrying: network trouble, rate limits, server errors (HTTP 429/5xx)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or 500 <= status < 600)


@dataclass
class JobPolicy:
    """How jobs are waited for and retried: a wall-clock timeout, transient-error retries with exponential backoff."""

    timeout_s: float = 3600.0
    retries: int = 3
    backoff_s: float = 2.0
    poll_s: float = 0.05


class JobRunner:
    """Submits primitive jobs, waits for them with a timeout, retries transient submission errors, cancels.

    ``submit`` is a callable returning a job with ``job_id()``, ``done()``, ``result()`` and ``cancel()``
    (a RuntimeJobV2 for IBM Quantum, a LocalRuntimeJob for fake backends and Aer). The ids of submitted
    jobs are kept in ``job_ids`` so the caller can report them.
    """

    def __init__(self, policy: JobPolicy | None = None, secrets: Iterable[str] = (), sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or JobPolicy()
        self.secrets = list(secrets)
        self.sleep = sleep
        self.clock = clock
        self.job_ids: list[str] = []
        self.retried = 0
        self._in_flight: list[Any] = []

    def run(self, submit: Callable[[], Any], what: str) -> Any:
        """Submit (retrying transient errors), wait for the result within the timeout, and return it."""
        job = self._submit(submit, what)
        job_id = str(job.job_id())
        self.job_ids.append(job_id)
        self._in_flight.append(job)
        try:
            deadline = self.clock() + self.policy.timeout_s
            while not job.done():
                if self.clock() > deadline:
                    self._cancel(job)
                    raise DeviceFailure(f"{what}: job {job_id} did not finish within {self.policy.timeout_s:g} s and was cancelled; raise the timeout or use fewer shots/circuits")
                self.sleep(self.policy.poll_s)
            try:
                return job.result()
            except Exception as exc:  # noqa: BLE001 - a library error of any type is reported, redacted
                raise DeviceFailure(redact(f"{what}: job {job_id} failed ({type(exc).__name__}: {exc})", self.secrets)) from None
        except KeyboardInterrupt:
            self._cancel(job)
            raise
        finally:
            self._in_flight.remove(job)

    def _submit(self, submit: Callable[[], Any], what: str) -> Any:
        delay = self.policy.backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return submit()
            except Exception as exc:  # noqa: BLE001 - a library error of any type is reported, redacted
                message = redact(f"{type(exc).__name__}: {exc}", self.secrets)
                if not is_transient(exc) or attempt > self.policy.retries:
                    tries = f" after {attempt} attempts" if attempt > 1 else ""
                    raise DeviceFailure(f"{what}: submitting the job failed{tries} ({message})") from None
                logger.warning("%s: transient error on submission (%s); retrying in %.1f s", what, message, delay)
                self.retried += 1
                self.sleep(delay)
                delay *= 2

    def _cancel(self, job: Any) -> None:
        try:
            job.cancel()
        except Exception as exc:  # noqa: BLE001 - a job that already finished cannot be cancelled; nothing else to do
            logger.warning("cancelling job %s failed: %s", job.job_id(), redact(str(exc), self.secrets))

    def cancel_all(self) -> int:
        """Cancel every job still waited for (from another thread); returns how many were asked to cancel."""
        jobs = list(self._in_flight)
        for job in jobs:
            self._cancel(job)
        return len(jobs)
