"""The base images the compose files name, on a host that may not be able to pull them.

An official image that is already present or can be pulled is used as it is. Otherwise a
stand-in is built from Debian packages and tagged with the official name, so the compose
files and the project's Dockerfile run unchanged:

* a Debian base: `debootstrap --variant=minbase` (Python, pip, CA certificates) from the
  mirror this host's apt sources name, then `docker import`;
* `tensorflow/tensorflow:X.Y.Z`: that base + `pip install tensorflow-cpu==X.Y.Z`;
* `redis:...`: that base + Debian's redis-server, started like the official image does;
* `haproxy:...`: that base + Debian's haproxy, reading the official image's config path.

Downloads inside the containers go through whatever proxy the host uses; a TLS-intercepting
one needs its CA, so the stand-in BASE gets the host's CA bundle. That is the stand-in's
business only: the project's own image never bakes a CA in (its Dockerfile takes one as a
build secret instead).

Stand-ins are labelled with a hash of their recipe; one whose label matches is reused (the
cache between runs), so only the first run pays for the build (~5 min on 2 cores).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent / "standins"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_TAG = f"fmrec-standin/debian:{DEBIAN_SUITE}"
LABEL = "fmrec.standin.recipe"
PULL_TIMEOUT_S = 900


class ImageUnavailable(RuntimeError):
    """An image can neither be found, pulled nor built here (an environment problem)."""


@dataclass(frozen=True)
class ImageRecord:
    """How one base image was obtained, for the results file."""

    image: str
    source: str  # "present", "pulled", "stand-in (cached)" or "stand-in (built)"
    seconds: float
    size_bytes: int


def docker(*args: str, timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`, output captured; a failure raises with docker's own message."""
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise ImageUnavailable(f"docker {' '.join(args[:3])}: "
                               f"{(run.stderr or run.stdout).strip()[-800:]}")
    return run


def image_label(image: str) -> str | None:
    """The stand-in recipe label of a local image, "" if it has none, None if absent."""
    run = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}',
                 image, check=False)
    if run.returncode != 0:
        return None
    return run.stdout.strip().replace("<no value>", "")


def image_size(image: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def debian_mirror(sources: Sequence[Path] = (Path("/etc/apt/sources.list"),
                                             *sorted(Path("/etc/apt/sources.list.d").glob("*")))
                  ) -> str:
    """The first Debian archive this host's apt sources name (deb822 or one-line form)."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian"):
                return url
    return "http://deb.debian.org/debian"


def recipe_hash(*parts: str, files: Sequence[Path] = ()) -> str:
    """Changes whenever a stand-in's recipe does, so a stale cached one is rebuilt."""
    digest = hashlib.sha256()
    for part in (*parts, *(p.read_text() for p in files)):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def build_base(recipe: str) -> None:
    """debootstrap a minimal Debian with Python, give it the host's CA bundle, import it."""
    if shutil.which("debootstrap") is None:
        raise ImageUnavailable("debootstrap is missing (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="fmrec-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        run = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
             DEBIAN_SUITE, str(root), debian_mirror()],
            capture_output=True, text=True, timeout=1800)
        if run.returncode != 0:
            raise ImageUnavailable(f"debootstrap failed: {run.stdout.strip()[-600:]}"
                                   f"{run.stderr.strip()[-600:]}")
        if HOST_CA_BUNDLE.is_file():  # the host's proxy CA, if any: stand-in base only
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", f"LABEL {LABEL}={recipe}",
             "--change", 'CMD ["/bin/bash"]', "-", BASE_TAG],
            stdin=tar.stdout, capture_output=True, text=True, timeout=1800)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ImageUnavailable(f"docker import failed: {imported.stderr.strip()[-600:]}")


def build_standin(image: str, dockerfile: str, recipe: str, **args: str) -> None:
    build_args = [a for k, v in {"BASE": BASE_TAG, **args}.items()
                  for a in ("--build-arg", f"{k}={v}")]
    docker("build", "--quiet", "--label", f"{LABEL}={recipe}", "-f", str(HERE / dockerfile),
           *build_args, "-t", image, str(HERE), timeout=1800)


def ensure(image: str, log: list[str]) -> ImageRecord:
    """Make `image` (a tensorflow/tensorflow, redis or haproxy tag) available locally."""
    start = time.monotonic()
    name, _, tag = image.partition(":")
    if name == "tensorflow/tensorflow":
        if not re.fullmatch(r"\d+\.\d+\.\d+", tag):
            raise ImageUnavailable(f"no stand-in for {image}: only CPU release tags")
        dockerfile, args = "tensorflow.Dockerfile", {"TF_VERSION": tag}
    elif name == "redis":
        dockerfile, args = "redis.Dockerfile", {}
    elif name == "haproxy":
        dockerfile, args = "haproxy.Dockerfile", {}
    else:
        raise ImageUnavailable(f"no stand-in recipe for {image}")
    recipe = recipe_hash(image, *args.values(), files=sorted(HERE.iterdir()))
    base_recipe = recipe_hash(DEBIAN_SUITE, *DEBIAN_PACKAGES)

    label = image_label(image)
    if label == "":  # an official image, pulled before
        source = "present"
    elif label == recipe:
        source = "stand-in (cached)"
    elif label is None and docker("pull", "--quiet", image, check=False,
                                  timeout=PULL_TIMEOUT_S).returncode == 0:
        source = "pulled"
    else:
        log.append(f"{image}: cannot be pulled here; building a stand-in from Debian packages")
        if image_label(BASE_TAG) != base_recipe:
            log.append(f"{BASE_TAG}: debootstrap {DEBIAN_SUITE} from {debian_mirror()}")
            build_base(base_recipe)
        build_standin(image, dockerfile, recipe, **args)
        source = "stand-in (built)"
    return ImageRecord(image, source, round(time.monotonic() - start, 1), image_size(image))
