# derpd — see README.md. `make run` and `make test` are the two commands.
VERSION  := 0.1.0
PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build

CC       ?= cc
PKGS     := libsodium wolfssl jansson libmicrohttpd libcurl
CPPFLAGS += -I. -D_GNU_SOURCE -DDERPD_VERSION='"$(VERSION)"'
CFLAGS   ?= -O2 -g
override CFLAGS += -std=c11 -Wall -Wextra -Werror -pthread $(EXTRA_CFLAGS)
LDFLAGS  += -pthread $(EXTRA_LDFLAGS)
# wolfSSL: by default built from Debian's source with AES-NI into .cache/ (scripts/wolfssl.sh,
# cached); WOLFSSL=system links Debian's libwolfssl (no assembly) instead.
WOLFSSL  ?= local
ifeq ($(WOLFSSL),system)
WOLFSSL_DEP :=
PKG_ENV  :=
else
WOLFSSL_DEP := $(BUILD)/wolfssl.prefix
PKG_ENV   = PKG_CONFIG_PATH=$(shell cat $(WOLFSSL_DEP) 2>/dev/null)/lib/pkgconfig
endif
PKG_CFLAGS = $(shell $(PKG_ENV) pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell $(PKG_ENV) pkg-config --libs $(PKGS) 2>/dev/null)

# derpd_build_info's revision: `git describe` of the tree being built, "unknown" outside
# git (a packager may set REVISION=). Kept in $(BUILD)/revision, rewritten only when it
# changes, so only metrics/snapshot.o is rebuilt for a new commit.
REVISION ?= $(shell git describe --always --dirty --tags 2>/dev/null || echo unknown)

# Every module directory contributes all its .c files to one static library;
# the programs and tests link against it. main.c files are programs, not library.
MODULES  := server stun acme mesh metrics
LIB_SRC  := $(filter-out %/main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libderpd.a
# A tool is one tools/*.c, or a directory of files: derpd-bench is tools/bench/*.c.
BENCH_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/bench/*.c))
PROBE_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/probe/*.c))
TOOLS    := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c)) $(BUILD)/tools/derpd-bench \
            $(BUILD)/tools/derpd-probe
UNIT     := $(patsubst test/unit/%.c,$(BUILD)/test/unit/%,$(wildcard test/unit/test_*.c))
E2E      := $(patsubst test/e2e/%.c,$(BUILD)/test/e2e/%,$(wildcard test/e2e/test_*.c))
E2E_LIB  := $(filter-out test/e2e/test_%.c,$(wildcard test/e2e/*.c))
FUZZ_SRC := $(wildcard test/fuzz/fuzz_*.c)

.PRECIOUS: $(BUILD)/%.o
.PHONY: all deps deps-test run test check check-unit check-e2e check-asan check-tsan check-man \
        check-flags check-tools check-systemd check-deb check-monitoring fuzz install programs deb clean bench interop
all: derpd $(TOOLS)

# The programs in $(BUILD) only, without the ./derpd copy (make install, debian/rules).
programs: $(BUILD)/derpd $(TOOLS)

# Debian packages by purpose (scripts/deps.sh, README): `deps` what building and running
# need, `deps-test` that plus the test tools (`make deb` asks for the deb set). Plain `make`
# installs nothing.
deps:
	@sh scripts/deps.sh build

deps-test:
	@sh scripts/deps.sh test

derpd: $(BUILD)/derpd
	cp $< $@

$(BUILD)/derpd: $(BUILD)/server/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Always asks the script (a no-op when the cached build is current); the file changes only
# when the prefix does, and then every object is rebuilt against the new headers.
.PHONY: FORCE
$(BUILD)/wolfssl.prefix: FORCE
	@mkdir -p $(BUILD)
	@sh scripts/wolfssl.sh > $@.tmp && { cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@; }

$(BUILD)/revision: FORCE
	@mkdir -p $(BUILD)
	@echo '$(subst ','',$(REVISION))' > $@.tmp && { cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@; }

$(BUILD)/metrics/snapshot.o: $(BUILD)/revision
$(BUILD)/metrics/snapshot.o: CPPFLAGS += -DDERPD_REVISION='"$(shell cat $(BUILD)/revision 2>/dev/null)"'

$(BUILD)/%.o: %.c $(WOLFSSL_DEP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(PKG_CFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tools/%: $(BUILD)/tools/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tools/derpd-bench: $(BENCH_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/tools/derpd-probe: $(PROBE_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/test/unit/%: $(BUILD)/test/unit/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka -lm

$(BUILD)/test/e2e/%: $(BUILD)/test/e2e/%.o $(E2E_LIB:%.c=$(BUILD)/%.o) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka -lm

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- the two commands -------------------------------------------------------
run: deps
	@$(MAKE) --no-print-directory derpd
	./derpd -dev

test: deps-test
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory interop
	@$(MAKE) --no-print-directory check-asan

check: all $(UNIT) $(E2E) check-man check-flags check-tools check-systemd check-deb check-monitoring
	@sh test/run.sh $(BUILD) $(UNIT) $(E2E)

check-unit: $(BUILD)/derpd $(TOOLS) $(UNIT)
	@sh test/run.sh $(BUILD) $(UNIT)

check-e2e: $(BUILD)/derpd $(TOOLS) $(E2E)
	@sh test/run.sh $(BUILD) $(E2E)

# The whole suite again, built with AddressSanitizer + UBSan into build-asan/.
check-asan:
	@$(MAKE) --no-print-directory BUILD=build-asan \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" CFLAGS="-O1 -g" \
	  DERPD_BIN=build-asan/derpd check-unit check-e2e

# The end-to-end suite against derpd built with ThreadSanitizer, into build-tsan/ (CI runs
# it after make test; the workers, the HTTP threads and connection moves share memory).
check-tsan:
	@$(MAKE) --no-print-directory BUILD=build-tsan EXTRA_CFLAGS="-fsanitize=thread" \
	  EXTRA_LDFLAGS="-fsanitize=thread" CFLAGS="-O1 -g" DERPD_BIN=build-tsan/derpd check-e2e

# Tailscale's own code (tailscale.com pinned in test/interop/go.mod) against this derpd:
# upstream's DERP client, derper, derpprobe, netcheck, two tsnet nodes. Skipped with one
# line when Go is missing or too old, unless INTEROP_REQUIRE=1. INTEROP_FLAGS: e.g. -run x -v.
interop: $(BUILD)/derpd
	@sh test/interop/run.sh $(BUILD) $(INTEROP_FLAGS)

check-man:
	@out=$$(mandoc -T lint -W warning man/*.[0-9] 2>&1); \
	 if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; echo "man pages: mandoc lint clean"

# The tools' --version, and derpd-bench's output when it knows no server pid.
check-tools: $(BUILD)/derpd $(TOOLS)
	@sh test/tools.sh $(BUILD) $(VERSION)

# The unit verifies (systemd-analyze) and derpd runs with its privileges (setpriv, as root).
check-systemd: $(BUILD)/derpd
	@sh test/systemd/check.sh $(BUILD)

# monitoring/: promtool check rules + test rules, the dashboard's JSON and PromQL, and
# every metric they name exported by a running derpd (TLS and mesh on, so all families show).
check-monitoring: $(BUILD)/derpd
	@sh test/monitoring/check.sh $(BUILD)

check-flags: derpd
	@if [ -x ../shared/tools/flagcheck ]; then ../shared/tools/flagcheck ./derpd man/derpd.8; \
	 else echo "check-flags: ../shared/tools/flagcheck not present, skipped"; fi

# libFuzzer targets (clang). The library is compiled once with coverage and sanitizers
# into $(BUILD)/fuzz/lib and each target links against it. FUZZ_SECONDS bounds each run;
# FUZZ_SEED/FUZZ_RUNS make a run repeatable. FUZZ_BUDGET names a file of per-target
# "name runs seconds" lines that replace FUZZ_RUNS/FUZZ_SECONDS (CI: test/fuzz/ci-budget,
# so the slow whole-connection targets get fewer runs). FUZZ_TARGETS picks some targets.
FUZZ_SECONDS ?= 20
FUZZ_SEED ?= 0
FUZZ_RUNS ?= -1
FUZZ_BUDGET ?=
FUZZ_CC  ?= clang
FUZZ_FLAGS := -std=c11 -g -O1 -fno-omit-frame-pointer
FUZZ_OBJ := $(LIB_SRC:%.c=$(BUILD)/fuzz/lib/%.o)
FUZZ_BIN := $(patsubst test/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_TARGETS ?= $(FUZZ_BIN:$(BUILD)/fuzz/%=%)

$(BUILD)/fuzz/lib/%.o: %.c $(WOLFSSL_DEP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(PKG_CFLAGS) $(FUZZ_FLAGS) \
	  -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c -o $@ $<

$(BUILD)/fuzz/libderpd.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/fuzz_%: test/fuzz/fuzz_%.c $(wildcard test/fuzz/*.h) $(BUILD)/fuzz/libderpd.a
	$(FUZZ_CC) $(CPPFLAGS) $(PKG_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined \
	  -o $@ $< $(BUILD)/fuzz/libderpd.a $(PKG_LIBS) -pthread -lm

# fuzz_derpmap compiles derpd-probe's DERP map parser in (the tool is not in the library)
$(BUILD)/fuzz/fuzz_derpmap: tools/probe/derpmap.c tools/probe/probe.h

fuzz: $(addprefix $(BUILD)/fuzz/,$(FUZZ_TARGETS))
	@sh test/fuzz/run.sh "$(BUILD)" "$(FUZZ_SECONDS)" "$(FUZZ_SEED)" "$(FUZZ_RUNS)" \
	  "$(FUZZ_BUDGET)" $(FUZZ_TARGETS)

# derpd is a daemon: $(PREFIX)/sbin; the tools are user commands: $(PREFIX)/bin. The systemd
# unit goes where Debian puts packaged units: /lib/systemd/system for PREFIX=/usr, else
# $(PREFIX)/lib/systemd/system; the derpd user's sysusers.d file to $(PREFIX)/lib/sysusers.d
# (both directories systemd reads), and as root with no DESTDIR systemd-sysusers creates the
# user now. /etc/default/derpd is never overwritten. debian/rules uses this target too.
SBINDIR  ?= $(PREFIX)/sbin
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
SYSTEMD_UNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
# The units in contrib/systemd (derpd.service, and any .socket beside it).
UNITS    := $(wildcard contrib/systemd/*.service contrib/systemd/*.socket)
install: programs
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8
	install -d $(DESTDIR)$(SYSTEMD_UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)/etc/default
	@for u in $(UNITS); do echo "install $$u"; \
	  sed 's|^ExecStart=/usr/sbin/derpd|ExecStart=$(SBINDIR)/derpd|' $$u \
	    > $(DESTDIR)$(SYSTEMD_UNITDIR)/$${u##*/} && chmod 0644 $(DESTDIR)$(SYSTEMD_UNITDIR)/$${u##*/} || exit 1; \
	done
	install -m 0644 contrib/systemd/derpd.sysusers $(DESTDIR)$(SYSUSERSDIR)/derpd.conf
	@[ -e $(DESTDIR)/etc/default/derpd ] || install -m 0644 contrib/systemd/derpd.default $(DESTDIR)/etc/default/derpd
	install -m 0755 $(BUILD)/derpd $(DESTDIR)$(SBINDIR)/derpd
	install -m 0644 man/derpd.8 $(DESTDIR)$(MANDIR)/man8/derpd.8
	@for t in $(TOOLS); do install -m 0755 $$t $(DESTDIR)$(BINDIR)/ || exit 1; done
	@for p in man/*.1; do [ -f "$$p" ] || continue; install -d $(DESTDIR)$(MANDIR)/man1; \
	  install -m 0644 $$p $(DESTDIR)$(MANDIR)/man1/ || exit 1; done
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v systemd-sysusers >/dev/null; then \
	  echo "systemd-sysusers derpd.conf"; systemd-sysusers $(SYSUSERSDIR)/derpd.conf; fi

# The Debian package (debian/, dpkg-buildpackage from a copy of this tree): leaves
# derpd_$(VERSION)_<arch>.deb, derpd-dbgsym_..., .buildinfo and .changes in $(BUILD).
deb:
	@sh scripts/deps.sh deb
	@sh scripts/deb.sh $(BUILD)

# Builds the package and checks its contents, its maintainer scripts and lintian.
check-deb: programs
	@sh test/deb/check.sh $(BUILD)

# The standard benchmark matrix on loopback, nginx as the reference relay (BENCHMARKS.md).
bench: all
	@sh scripts/bench.sh $(BUILD)

clean:
	rm -rf build build-asan build-tsan derpd
