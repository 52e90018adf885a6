# Benchmark targets (see bench/README.md). The tests are run as README.md says, not from here.
PYTHON ?= python3

.PHONY: bench bench-setup

# hostops against its peers, 500 hosts on a loopback sshd lab, 3 rounds
bench:
	$(PYTHON) bench/fleet.py --hosts 500

# install the peers: pip install -e '.[bench]' and apt-get install pssh clustershell
bench-setup:
	PYTHON=$(PYTHON) bench/setup
