// Command interop runs Tailscale's own code (tailscale.com, pinned in go.mod) against
// derpd: upstream's DERP client, derper, derpprobe, netcheck and two tsnet nodes. Each
// check prints "PASS name: detail" or "FAIL name: detail"; the last line is
// "interop: N passed, M failed". The suite runs in a network namespace of its own with
// only loopback up (see netns.go), so nothing it starts can reach another machine.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"sort"
	"strings"
	"time"
)

var (
	flagDerpd     = flag.String("derpd", "", "derpd binary under test (required)")
	flagDerper    = flag.String("derper", "", "upstream derper binary built from the same release (for the mixed region)")
	flagDerpprobe = flag.String("derpprobe", "", "upstream derpprobe binary built from the same release")
	flagRun       = flag.String("run", "", "run only the checks whose name matches this regular expression")
	flagList      = flag.Bool("list", false, "list the checks and exit")
	flagVerbose   = flag.Bool("v", false, "log each check's progress and keep the logs of failed checks on stderr")
	flagNoNetns   = flag.Bool("no-netns", false, "run in the current network namespace (the tailnet checks then rely on their envknobs alone)")
	flagKeep      = flag.Bool("keep", false, "keep the temporary directory")
)

// A check is one named, independent test. Groups register theirs from init().
type check struct {
	name string
	fn   func(c *C)
}

var checks []check

func register(name string, fn func(c *C)) { checks = append(checks, check{name, fn}) }

func main() {
	flag.Parse()
	if *flagList {
		for _, ch := range checks {
			fmt.Println(ch.name)
		}
		return
	}
	if *flagDerpd == "" {
		fmt.Fprintln(os.Stderr, "interop: -derpd is required")
		os.Exit(2)
	}
	for _, p := range []*string{flagDerpd, flagDerper, flagDerpprobe} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				fatalf("%v", err)
			}
			*p = abs
		}
	}
	if !*flagNoNetns && os.Getenv(netnsEnv) == "" {
		os.Exit(reexecInNetns())
	}
	if os.Getenv(netnsEnv) != "" {
		if err := netnsSetup(); err != nil {
			fatalf("network namespace set-up: %v", err)
		}
	}
	var err error
	suiteDir, err = os.MkdirTemp("", "derpd-interop-")
	if err != nil {
		fatalf("%v", err)
	}
	if !*flagKeep {
		defer os.RemoveAll(suiteDir)
	}
	// The test CA becomes the system root set of this process before any TLS code
	// loads it: upstream's clients verify derpd's certificate for real.
	if testCA, err = newCA(filepath.Join(suiteDir, "ca")); err != nil {
		fatalf("test CA: %v", err)
	}
	os.Setenv("SSL_CERT_FILE", testCA.CertFile)
	os.Unsetenv("SSL_CERT_DIR")

	var re *regexp.Regexp
	if *flagRun != "" {
		re = regexp.MustCompile(*flagRun)
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "tailscale.com" {
				fmt.Printf("interop: tailscale.com %s, derpd %s\n", d.Version, *flagDerpd)
			}
		}
	}
	start := time.Now()
	pass, fail := 0, 0
	var failed []string
	for _, ch := range checks {
		if re != nil && !re.MatchString(ch.name) {
			continue
		}
		ok, detail := runCheck(ch)
		if ok {
			pass++
			fmt.Printf("PASS %s: %s\n", ch.name, detail)
		} else {
			fail++
			failed = append(failed, ch.name)
			fmt.Printf("FAIL %s: %s\n", ch.name, detail)
		}
	}
	sort.Strings(failed)
	if len(failed) > 0 {
		fmt.Printf("interop: failing: %s\n", strings.Join(failed, " "))
	}
	fmt.Printf("interop: took %s\n", time.Since(start).Round(time.Second))
	fmt.Printf("interop: %d passed, %d failed\n", pass, fail)
	if fail > 0 || pass == 0 {
		os.Exit(1)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "interop: "+format+"\n", args...)
	os.Exit(2)
}
