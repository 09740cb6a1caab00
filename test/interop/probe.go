package main

// Upstream's derpprobe (cmd/derpprobe, prober/derp.go) run once against a region of two
// meshed derpd nodes served over TLS by the test CA, with STUN. With -once it runs each
// probe of the map once and logs "good: <probe>: <latency>" or "bad: <probe>: <error>":
//
//	derpmap-probe                 fetching the DERP map (here a file:// URL)
//	derp/<region>/<node>/tls      TLS handshake to HostName:DERPPort, certificate times
//	derp/<region>/<node>/udp      a STUN binding request to IPv4:STUNPort
//	derp/<region>/<a>/<b>/mesh    a packet from a client on a to one on b (a == b: single)
//	derp/<region>/<a>/<b>/bw      -bw-probe-size-bytes from a client on a to one on b
//
// The queuing-delay probe (-qd-packets-per-second) runs continuously by design, never
// ending in -once mode, so it is not run here.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"tailscale.com/tailcfg"
)

func init() {
	register("probe/derpprobe", probeDerpprobe)
}

func probeDerpprobe(c *C) {
	if *flagDerpprobe == "" {
		c.Fatalf("no -derpprobe binary given")
	}
	dir := c.TempDir()
	meshKey := NewMeshKey()
	pa, pb := FreePort(c), FreePort(c)
	meshWith := fmt.Sprintf("%s:%d,%s:%d", Hostname, pa, Hostname, pb)
	var nodes [2]*Server
	for i, port := range []int{pa, pb} {
		nodes[i] = StartDerpd(c, ServerOpts{TLS: true, STUN: true, Port: port, MeshKey: meshKey,
			Args: []string{"-mesh-with", meshWith, "--mesh-ca-file", testCA.CertFile}})
	}
	c.Eventually(15*time.Second, "derpd nodes meshed", func() error {
		for _, s := range nodes {
			if w, err := s.Varz(); err != nil || w["derp_watchers"] != 1 {
				return fmt.Errorf("%s: derp_watchers %v (%v)", s.Addr(), w["derp_watchers"], err)
			}
		}
		return nil
	})

	const region = 900
	dm := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{region: {
		RegionID: region, RegionCode: "derpd", RegionName: "derpd interop",
	}}}
	for i, s := range nodes {
		dm.Regions[region].Nodes = append(dm.Regions[region].Nodes, &tailcfg.DERPNode{
			Name: fmt.Sprintf("%d%c", region, 'a'+i), RegionID: region, HostName: Hostname,
			IPv4: "127.0.0.1", DERPPort: s.Port, STUNPort: s.STUNPort,
		})
	}
	mapFile := filepath.Join(dir, "derpmap.json")
	b, err := json.MarshalIndent(dm, "", "  ")
	c.Check(err, "marshal DERP map")
	c.Check(os.WriteFile(mapFile, b, 0o644), "write DERP map")
	keyFile := filepath.Join(dir, "mesh.key")
	c.Check(os.WriteFile(keyFile, []byte(meshKey+"\n"), 0o600), "write mesh key")

	// The environment carries SSL_CERT_FILE (the test CA): the prober verifies for real.
	args := []string{"-once", "-spread=false", "-derp-map", "file://" + mapFile, "-mesh-psk-file", keyFile,
		"-bw-interval", "1s", "-bw-probe-size-bytes", "1000000"}
	cmd := exec.CommandContext(c.Ctx, *flagDerpprobe, args...)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.Dir = dir
	c.Logf("run %s %s", *flagDerpprobe, strings.Join(args, " "))
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	took := time.Since(start)
	c.Check(os.WriteFile(filepath.Join(dir, "derpprobe.log"), out, 0o644), "write log")

	// "2006/01/02 15:04:05 good: derp/derpd/900a/tls: 1.2ms" / "... bad: <name>: <error>"
	re := regexp.MustCompile(`(?m)^\S+ \S+ (good|bad): (\S+): (.*)$`)
	good := map[string]string{}
	bad := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		if m[1] == "good" {
			good[m[2]] = m[3]
		} else {
			bad[m[2]] = m[3]
		}
	}
	if len(bad) > 0 {
		var l []string
		for n, why := range bad {
			l = append(l, n+": "+why)
		}
		sort.Strings(l)
		c.Fatalf("derpprobe: %d good, %d bad: %s", len(good), len(bad), strings.Join(l, "; "))
	}
	if runErr != nil {
		c.Fatalf("derpprobe: %v; output: %s", runErr, lastLines(string(out), 10))
	}
	// Every probe the map calls for must have run (a skipped one is not a good one).
	want := []string{"derpmap-probe"}
	for _, a := range dm.Regions[region].Nodes {
		want = append(want, "derp/derpd/"+a.Name+"/tls", "derp/derpd/"+a.Name+"/udp")
		for _, b := range dm.Regions[region].Nodes {
			want = append(want, "derp/derpd/"+a.Name+"/"+b.Name+"/mesh", "derp/derpd/"+a.Name+"/"+b.Name+"/bw")
		}
	}
	var missing []string
	for _, n := range want {
		if _, ok := good[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		c.Fatalf("derpprobe did not report %s good (%d good); output: %s", strings.Join(missing, ", "), len(good), lastLines(string(out), 10))
	}
	var fwd float64
	for _, s := range nodes {
		fwd += s.Metric("derp_packets_forwarded_out")
	}
	kinds := map[string]int{}
	for n := range good {
		kinds[n[strings.LastIndexByte(n, '/')+1:]]++
	}
	var kl []string
	for k, v := range kinds {
		kl = append(kl, k+" "+strconv.Itoa(v))
	}
	sort.Strings(kl)
	c.Passf("derpprobe -once ran %d probes in %v, all good (%s); bw a->b took %s; packets forwarded across the mesh: %v",
		len(good), took.Round(100*time.Millisecond), strings.Join(kl, ", "), good["derp/derpd/900a/900b/bw"], fwd)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}
