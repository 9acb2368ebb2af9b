# dicom-agent: every target does its own set-up; `make test` and `make demo` are the two
# commands a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
APT_STAMP := /var/lib/dicom-agent-lab/apt-packages.stamp
APT_PACKAGES := dnsmasq-base kea-dhcp4-server kea-dhcp-ddns-server bind9 bind9-dnsutils \
	chrony ntpsec-ntpdig slapd ldap-utils avahi-daemon avahi-utils mdns-scan dhcpcd-base \
	busybox isc-dhcp-client tcpdump dbus iproute2 openssl procps util-linux hostname tzdata \
	dcmtk systemd-container debootstrap groff-base debhelper lintian python3-pip \
	qemu-system-x86 qemu-utils

.PHONY: setup apt venv test unit integration demo bench fuzz soak audit install uninstall deb client-wheel lint lab-up lab-down diagram clean man

setup: apt venv

# Lab packages. policy-rc.d (exit 101) keeps apt from starting slapd, bind9, chrony... on
# the host, and slapd is preseeded to build no default database. Skipped when the stamp
# matches the package list.
apt:
	@if [ -f $(APT_STAMP) ] && [ "$$(cat $(APT_STAMP))" = "$(APT_PACKAGES)" ]; then exit 0; fi; \
	set -e; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\n# dicom-agent lab: never start services from apt\nexit 101\n' > /usr/sbin/policy-rc.d; \
	  chmod 755 /usr/sbin/policy-rc.d; \
	fi; \
	echo "slapd slapd/no_configuration boolean true" | debconf-set-selections; \
	apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	mkdir -p $(dir $(APT_STAMP)); echo "$(APT_PACKAGES)" > $(APT_STAMP)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: setup
	$(PY) -m pytest -q --durations=15 tests; rc=$$?; \
	left=$$(ip netns list | awk '$$1 ~ /^dcmt/ {print $$1}'); \
	if [ -n "$$left" ]; then echo "FAIL: the suite left namespaces behind: $$left"; rc=1; fi; \
	exit $$rc

# The unit tier with every capability dropped (this machine's interpreter is not
# reachable by an unprivileged user, so root without capabilities stands for one).
unit: venv
	setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- \
	  $(PY) -m pytest -q -m "not integration" tests

integration: setup
	$(PY) -m pytest -q -m integration tests

demo: setup
	$(PY) netns-fixtures/demo.py

# Bytecode first, as an installed agent has it (pip compiles at install): a run that
# compiles its modules measures the compiler (PYTHONDONTWRITEBYTECODE keeps it from caching).
bench: setup
	$(PY) -m compileall -q agent profiles
	$(PY) netns-fixtures/bench.py

# Long campaigns (CI runs short, seeded ones inside `make test`): a hostile DHCP server
# against the live daemon with a random seed (printed; DICOM_AGENT_FUZZ_SEED repeats a
# run), and kill -9 at random instants (DICOM_AGENT_SOAK_TRIALS).
FUZZ_PACKETS ?= 3000
SOAK_TRIALS ?= 100
fuzz: setup
	DICOM_AGENT_FUZZ_SEED=$${DICOM_AGENT_FUZZ_SEED:-$$RANDOM$$RANDOM} \
	DICOM_AGENT_FUZZ_PACKETS=$(FUZZ_PACKETS) \
	$(PY) -m pytest -q -s -p no:cacheprovider tests/integration/test_hostile_dhcp.py

soak: setup
	DICOM_AGENT_SOAK_TRIALS=$(SOAK_TRIALS) \
	$(PY) -m pytest -q -s -p no:cacheprovider tests/integration/test_kill9.py

# systemd-analyze security (offline) of the shipped unit beside the system's own network
# daemons (the bar: networkd's).
audit:
	@for unit in agent/systemd/dicom-agent.service /lib/systemd/system/systemd-networkd.service \
	    /lib/systemd/system/chrony.service; do \
	  [ -e $$unit ] || continue; \
	  printf '%-48s %s\n' "$$unit" "$$(systemd-analyze security --offline=true $$unit 2>/dev/null \
	    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"; \
	done
	@root=$$(mktemp -d) && mkdir -p $$root/etc/systemd/system/dicom-agent.service.d && \
	  cp agent/systemd/dicom-agent.service $$root/etc/systemd/system/ && \
	  cp agent/systemd/sntp.conf $$root/etc/systemd/system/dicom-agent.service.d/ && \
	  printf '%-48s %s\n' "dicom-agent.service + sntp.conf (CAP_SYS_TIME)" "$$(systemd-analyze \
	    security --offline=true --root=$$root dicom-agent.service 2>/dev/null \
	    | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"; rm -rf $$root

lint: venv
	$(VENV)/bin/ruff check agent profiles tests netns-fixtures

# The man pages, from the reference documentation (docs/*.rst: one source for both).
MANPAGES := build/man/dicom-agent.8 build/man/dicom-agent.toml.5
man: $(MANPAGES)
build/man/%: docs/%.rst venv
	@mkdir -p build/man
	$(PY) -m docutils --writer=manpage --halt=warning $< $@

FLAVOUR ?= dnsmasq
# The boot state diagram, generated from agent/daemon/boot.py's table (Graphviz dot; an SVG too
# when dot is installed). boot-states.dot is committed; a test fails when it differs.
diagram: venv
	$(PY) -m agent.daemon.boot > boot-states.dot
	@if command -v dot >/dev/null; then dot -Tsvg boot-states.dot -o boot-states.svg; fi
	@echo "wrote boot-states.dot"

lab-up: setup
	python3 netns-fixtures/lab.py up --flavour $(FLAVOUR)

lab-down:
	python3 netns-fixtures/lab.py down --all

# A staging install, as packagers expect (packaging/stage.py): files only, under DESTDIR
# for the final paths, nothing run inside DESTDIR. PREFIX [/usr]; the product and its
# Python dependencies in PREFIX/lib/dicom-agent/python. Offline builds (Yocto, Buildroot):
# WHEELHOUSE=dir holds pre-fetched wheels (setuptools among them, to build the product's);
# BUNDLE_DEPS=0 leaves the dependencies to the image. Creating the user, applying
# tmpfiles, compiling bytecode and enabling the unit are the package's or the image's.
DESTDIR ?=
PREFIX ?= /usr
WHEELHOUSE ?=
BUNDLE_DEPS ?= 1
NO_DEPS := $(if $(filter 0,$(BUNDLE_DEPS)),--no-deps)
install: venv man
	rm -rf build/wheelhouse && mkdir -p build/wheelhouse
	$(PY) -m pip wheel -q --wheel-dir build/wheelhouse $(NO_DEPS) \
	  $(if $(WHEELHOUSE),--no-deps --no-index --find-links $(WHEELHOUSE)) .
	$(PY) packaging/stage.py --destdir "$(or $(DESTDIR),/)" --prefix $(PREFIX) \
	  --wheelhouse build/wheelhouse $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) \
	  $(NO_DEPS) --man build/man

# The Debian package (packaging/deb.py, debian/): build/deb/dicom-agent_<version>_all.deb,
# built by dpkg-buildpackage and checked by lintian (an error fails it). DEB_VERSION
# rebuilds it under another version; WHEELHOUSE=dir builds it offline.
DEB_VERSION ?=
deb: setup man
	$(PY) packaging/deb.py --man build/man $(if $(DEB_VERSION),--version $(DEB_VERSION)) \
	  $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

# The socket client alone (stdlib only) for applications outside the agent's venv:
# build/wheelhouse/dicom_agent_client-*.whl, module dicom_agent_client.
client-wheel: venv
	rm -rf build/client && mkdir -p build/client build/wheelhouse
	cp packaging/dicom-agent-client/pyproject.toml build/client/
	cp agent/client.py build/client/dicom_agent_client.py
	$(PY) -m pip wheel -q --no-deps --wheel-dir build/wheelhouse build/client
	@ls build/wheelhouse/dicom_agent_client-*.whl

# Removes what install wrote (its manifest); keeps an edited /etc/dicom-agent/agent.toml.
uninstall:
	$(PY) packaging/stage.py --uninstall --destdir "$(or $(DESTDIR),/)" --prefix $(PREFIX)

clean: lab-down
	rm -rf $(VENV) .pytest_cache .hypothesis
