# Benchmark targets (see bench/README.md). The tests are run as README.md says, not from here.
PYTHON ?= python3

.PHONY: bench bench-all bench-setup

# hostops against its peers, 500 hosts on a loopback sshd lab, 3 rounds
bench:
	$(PYTHON) bench/fleet.py --hosts 500

# every installed peer at 100, 500 and 2000 hosts, with and without 50 ms RTT (bench/matrix)
bench-all:
	PYTHON=$(PYTHON) bench/matrix

# install the peers: pip install -e '.[bench]' and apt-get install pssh clustershell
bench-setup:
	PYTHON=$(PYTHON) bench/setup
