package main

// Two real Tailscale nodes (tsnet, in this process) relaying through derpd: upstream's
// in-process control server hands both nodes a DERP map whose only region is derpd,
// TS_DEBUG_ALWAYS_USE_DERP makes every packet between them go through it, and the checks
// move 20 MB each way over a tailnet TCP connection, ping (disco and TSMP), and survive a
// derpd restart. Once over plain HTTP and once over TLS with the suite's CA.
//
// Nothing the nodes do may leave this machine. The suite runs in its own network
// namespace (netns.go: loopback only, plus an unrouted TEST-NET alias on lo that netmon
// needs to call the network "up"); on top of that tailnetKnobs turns off log upload,
// the port mapper and captive-portal probes, and the control URL and DERP map name only
// 127.0.0.1 / localhost.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/logtail"
	tsnetns "tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration/testcontrol"
)

const (
	tailnetRegion   = 900      // the DERP map's only region: derpd
	tailnetPort     = 8080     // node A's tailnet TCP port
	tailnetTransfer = 20 << 20 // bytes each way per transfer
	tailnetUpTime   = 90 * time.Second
)

func init() {
	register("tailnet/isolation", tailnetIsolationCheck)
	for _, mode := range []string{"http", "tls"} {
		tls := mode == "tls"
		register("tailnet/"+mode+"/transfer", func(c *C) { tailnetTransferCheck(c, tls, false) })
		register("tailnet/"+mode+"/ping", func(c *C) { tailnetPingCheck(c, tls) })
		register("tailnet/"+mode+"/restart", func(c *C) { tailnetRestartCheck(c, tls) })
	}
	// The same transfer through upstream derper: the baseline that shows the check
	// measures what it says (and derper's counters beside derpd's).
	register("tailnet/derper/transfer", func(c *C) { tailnetTransferCheck(c, true, true) })
}

var tailnetKnobSettings = [][2]string{
	{"TS_DEBUG_ALWAYS_USE_DERP", "true"},     // no UDP sockets at all: every packet via DERP
	{"TS_NO_LOGS_NO_SUPPORT", "true"},        // no log upload (logtail's transport is a no-op)
	{"TS_DISABLE_PORTMAPPER", "true"},        // no UPnP / NAT-PMP / PCP probes to a gateway
	{"TS_PANIC_IF_HIT_MAIN_CONTROL", "true"}, // a bug that dials Tailscale's control panics
}

var tailnetKnobList = func() string {
	var l []string
	for _, kv := range tailnetKnobSettings {
		l = append(l, kv[0]+"="+kv[1])
	}
	return strings.Join(l, " ")
}()

// tailnetKnobs sets the upstream envknobs the nodes read. envknob.Setenv also updates
// knobs already registered (read once at init), so the HTTP and TLS checks can switch
// TS_DEBUG_USE_DERP_HTTP between runs; the checks run one at a time.
func tailnetKnobs(tls bool) {
	for _, kv := range tailnetKnobSettings {
		envknob.Setenv(kv[0], kv[1])
	}
	// Plain HTTP to DERP (the HTTP checks) or TLS (the others).
	envknob.Setenv("TS_DEBUG_USE_DERP_HTTP", strconv.FormatBool(!tls))
	// Belt and braces: no logtail uploads for the rest of the process, whatever a
	// logger's config says.
	logtail.Disable()
	// As upstream's own tsnet tests do: no SO_MARK / interface binding on the nodes'
	// sockets (that is for tailscaled's routing loops with a real TUN; tsnet has none).
	tsnetns.SetEnabled(false)
}

// tailnet is derpd, a testcontrol server whose DERP map is derpd alone, and two nodes.
type tailnet struct {
	c      *C
	derpd  *Server
	ctl    *testcontrol.Server
	a, b   *tsnet.Server
	aIP    netip.Addr
	bIP    netip.Addr
	listen net.Listener // node A's tailnet listener on tailnetPort
}

func tailnetDERPMap(s *Server, tls bool) *tailcfg.DERPMap {
	n := &tailcfg.DERPNode{
		Name:     "derpd",
		RegionID: tailnetRegion,
		IPv4:     "127.0.0.1", // dialled instead of resolving HostName; also marks a test node for netcheck
		IPv6:     "none",
		STUNPort: s.STUNPort,
		DERPPort: s.Port,
	}
	if tls {
		n.HostName = Hostname // the certificate's name, verified against the suite's CA
	} else {
		n.HostName = "127.0.0.1"
		n.InsecureForTests = true // no TLS at all here (TS_DEBUG_USE_DERP_HTTP)
	}
	return &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		tailnetRegion: {RegionID: tailnetRegion, RegionCode: "derpd", RegionName: "derpd under test",
			Nodes: []*tailcfg.DERPNode{n}},
	}}
}

func startTailnet(c *C, tls, upstream bool) *tailnet {
	tailnetKnobs(tls)
	t := &tailnet{c: c}
	t.derpd = StartDerpd(c, ServerOpts{TLS: tls, STUN: true, Upstream: upstream})

	t.ctl = &testcontrol.Server{
		DERPMap: tailnetDERPMap(t.derpd, tls),
		Logf:    nodeLogger(c, "control"),
		// Replaces testcontrol's default capabilities (HTTPS, Funnel, Taildrop: unused
		// here) with the one that stops captive-portal probes, which would try
		// http://controlplane.tailscale.com/generate_204 and the like. This build does
		// not link feature/captiveportal, so today there are none; the attribute keeps
		// it so if a dependency ever pulls the feature in.
		DefaultNodeCapabilities: &tailcfg.NodeCapMap{
			tailcfg.NodeAttrDisableCaptivePortalDetection: nil,
		},
	}
	t.ctl.HTTPTestServer = httptest.NewUnstartedServer(t.ctl) // listens on 127.0.0.1:0
	t.ctl.HTTPTestServer.Start()
	c.Cleanup(t.ctl.HTTPTestServer.Close)
	controlURL := t.ctl.HTTPTestServer.URL
	c.Logf("testcontrol at %s, derpd at %s", controlURL, t.derpd.URL())

	// The two nodes come up in parallel: tsnet start-up is the slow part.
	ctx, cancel := context.WithTimeout(c.Ctx, tailnetUpTime)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	nodes := []**tsnet.Server{&t.a, &t.b}
	ips := []*netip.Addr{&t.aIP, &t.bIP}
	for i, name := range []string{"node-a", "node-b"} {
		s := &tsnet.Server{
			Dir:        filepath.Join(c.TempDir(), name),
			ControlURL: controlURL,
			Hostname:   name,
			Store:      new(mem.Store),
			Ephemeral:  true,
			Logf:       nodeLogger(c, name),
			UserLogf:   nodeLogger(c, name),
		}
		*nodes[i] = s
		c.Cleanup(func() { s.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.Up(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", name, err)
				return
			}
			*ips[i] = st.TailscaleIPs[0]
		}()
	}
	wg.Wait()
	for _, err := range errs {
		c.Check(err, "tsnet up")
	}
	t.waitHomeDERP()

	ln, err := t.a.Listen("tcp", ":"+strconv.Itoa(tailnetPort))
	c.Check(err, "node A listen")
	t.listen = ln
	c.Cleanup(func() { ln.Close() })
	return t
}

// waitHomeDERP waits until both nodes have received a frame from derpd's region (as
// upstream's tsnet tests wait, in waitForHomeDERPConnected) and derpd counts both as
// home connections (NotePreferred). After a restart only derpd's count says anything
// new: magicsock notes a received frame at most every few seconds per region, across
// reconnections. The nodes' netcheck is not asked which region it prefers: with UDP off
// (TS_DEBUG_ALWAYS_USE_DERP) it measures the region by ICMP or HTTPS, and where neither
// works magicsock still makes the only region home.
func (t *tailnet) waitHomeDERP() {
	t.c.Eventually(60*time.Second, "both nodes connected to derpd as home", func() error {
		for _, s := range []*tsnet.Server{t.a, t.b} {
			if s.Sys().HealthTracker.Get().GetDERPRegionReceivedTime(tailnetRegion).IsZero() {
				return errors.New("no frame from derpd yet")
			}
		}
		m, err := t.derpd.Varz()
		if err != nil {
			return err
		}
		if h := m["derp_current_home_connections"]; h != 2 {
			return fmt.Errorf("derpd has %v home connections", h)
		}
		return nil
	})
}

// transferStats is what one transfer moved and how long it took.
type transferStats struct {
	bytes   int64
	elapsed time.Duration
}

func (s transferStats) String() string {
	return fmt.Sprintf("%d MB each way in %.1f s (%.1f MB/s both ways together)",
		s.bytes>>20, s.elapsed.Seconds(), float64(2*s.bytes)/(1<<20)/s.elapsed.Seconds())
}

// transfer has node B dial node A and both send n bytes at once, each stream followed by
// its SHA-256, which the other side checks.
func (t *tailnet) transfer(n int64) transferStats {
	c := t.c
	ctx, cancel := context.WithTimeout(c.Ctx, 120*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()

	serverErr := make(chan error, 1)
	go func() {
		conn, err := t.listen.Accept()
		if err != nil {
			serverErr <- fmt.Errorf("accept: %w", err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(deadline)
		if err := exchange(conn, n, 1); err != nil {
			serverErr <- fmt.Errorf("node A: %w", err)
			return
		}
		// B closes first, once it has everything A sent: wait for its EOF so that A's
		// close never cuts off bytes still in flight.
		_, err = io.Copy(io.Discard, conn)
		serverErr <- err
	}()

	start := time.Now()
	var conn net.Conn
	c.Eventually(30*time.Second, "node B dials node A", func() error {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		var err error
		conn, err = t.b.Dial(dctx, "tcp", netip.AddrPortFrom(t.aIP, tailnetPort).String())
		return err
	})
	conn.SetDeadline(deadline)
	err := exchange(conn, n, 2)
	conn.Close()
	c.Check(err, "node B")
	select {
	case err := <-serverErr:
		c.Check(err, "node A")
	case <-ctx.Done():
		c.Fatalf("node A did not finish: %v", ctx.Err())
	}
	return transferStats{bytes: n, elapsed: time.Since(start)}
}

// exchange writes n pseudo-random bytes (seeded by seed) and their SHA-256 to conn while
// reading the peer's n bytes and checking their SHA-256. Each stream starts with its
// length so that the reader knows where the digest is.
func exchange(conn net.Conn, n int64, seed uint64) error {
	werr := make(chan error, 1)
	go func() {
		h := sha256.New()
		src := rand.NewChaCha8([32]byte{byte(seed)})
		var hdr [8]byte
		binary.BigEndian.PutUint64(hdr[:], uint64(n))
		if _, err := conn.Write(hdr[:]); err != nil {
			werr <- err
			return
		}
		buf := make([]byte, 64<<10)
		for left := n; left > 0; {
			chunk := buf[:min(int64(len(buf)), left)]
			src.Read(chunk)
			h.Write(chunk)
			if _, err := conn.Write(chunk); err != nil {
				werr <- fmt.Errorf("write at %d of %d: %w", n-left, n, err)
				return
			}
			left -= int64(len(chunk))
		}
		_, err := conn.Write(h.Sum(nil))
		werr <- err
	}()

	var hdr [8]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return fmt.Errorf("read length: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(hdr[:])); got != n {
		return fmt.Errorf("peer announces %d bytes, want %d", got, n)
	}
	h := sha256.New()
	if got, err := io.CopyN(h, conn, n); err != nil {
		return fmt.Errorf("read at %d of %d: %w", got, n, err)
	}
	var sum [sha256.Size]byte
	if _, err := io.ReadFull(conn, sum[:]); err != nil {
		return fmt.Errorf("read digest: %w", err)
	}
	if !bytes.Equal(sum[:], h.Sum(nil)) {
		return fmt.Errorf("SHA-256 of the %d bytes received does not match the sender's", n)
	}
	return <-werr
}

// derpCounters are derpd's relay counters the transfer must raise.
var derpCounters = []string{"derp_bytes_received", "derp_bytes_sent", "derp_packets_received", "derp_packets_sent"}

func (t *tailnet) counters() map[string]float64 {
	m, err := t.derpd.Varz()
	t.c.Check(err, "derpd /debug/varz")
	out := map[string]float64{}
	for _, k := range derpCounters {
		v, ok := m[k]
		if !ok {
			t.c.Fatalf("derpd: no series %q in /debug/varz", k)
		}
		out[k] = v
	}
	// All drop reasons and kinds together (the same series in derpd and derper).
	for k, v := range m {
		if strings.HasPrefix(k, "derp_packets_dropped{") {
			out["derp_packets_dropped"] += v
		}
	}
	return out
}

// throughDerpd checks that derpd relayed at least both streams of a transfer: every
// byte of each stream was a DERP packet payload it received and sent on.
func (t *tailnet) throughDerpd(before, after map[string]float64, n int64) string {
	min := float64(2 * n)
	for _, k := range []string{"derp_bytes_received", "derp_bytes_sent"} {
		if d := after[k] - before[k]; d < min {
			t.c.Fatalf("derpd %s grew by %.0f during the transfer, less than the %.0f bytes moved: not relayed by derpd?", k, d, min)
		}
	}
	d := func(k string) float64 { return after[k] - before[k] }
	return fmt.Sprintf("%s received %.1f MB in %.0f packets, sent %.1f MB in %.0f, dropped %.0f",
		t.derpd.Name, d("derp_bytes_received")/(1<<20), d("derp_packets_received"),
		d("derp_bytes_sent")/(1<<20), d("derp_packets_sent"), d("derp_packets_dropped"))
}

func tailnetTransferCheck(c *C, tls, upstream bool) {
	if upstream && *flagDerper == "" {
		c.Fatalf("no -derper binary given")
	}
	t := startTailnet(c, tls, upstream)
	before := t.counters()
	st := t.transfer(tailnetTransfer)
	via := t.throughDerpd(before, t.counters(), tailnetTransfer)
	c.Passf("node B <-> node A (%s -> %s:%d) via %s %s: %s, SHA-256 ok both ways; %s",
		t.bIP, t.aIP, tailnetPort, t.derpd.Name, t.derpd.URL(), st, via)
}

func tailnetPingCheck(c *C, tls bool) {
	t := startTailnet(c, tls, false)
	var details []string
	for _, pt := range []tailcfg.PingType{tailcfg.PingDisco, tailcfg.PingTSMP} {
		for _, p := range []struct {
			from   *tsnet.Server
			fromIP netip.Addr
			to     netip.Addr
		}{{t.b, t.bIP, t.aIP}, {t.a, t.aIP, t.bIP}} {
			lc, err := p.from.LocalClient()
			c.Check(err, "LocalClient")
			var res string
			c.Eventually(30*time.Second, fmt.Sprintf("%s ping %s", pt, p.to), func() error {
				ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
				defer cancel()
				r, err := lc.Ping(ctx, p.to, pt)
				if err != nil {
					return err
				}
				if r.Err != "" {
					return errors.New(r.Err)
				}
				if r.Endpoint != "" {
					c.Fatalf("%s ping to %s went direct to %s, not through DERP", pt, p.to, r.Endpoint)
				}
				// Only disco pings say which DERP region carried them.
				if pt == tailcfg.PingDisco && r.DERPRegionID != tailnetRegion {
					return fmt.Errorf("disco pong via DERP region %d, want %d", r.DERPRegionID, tailnetRegion)
				}
				res = fmt.Sprintf("%s %s->%s %.2f ms", pt, p.fromIP, p.to, r.LatencySeconds*1000)
				if r.DERPRegionID != 0 {
					res += " via DERP(" + r.DERPRegionCode + ")"
				}
				return nil
			})
			details = append(details, res)
		}
	}
	c.Passf("%s", strings.Join(details, "; "))
}

func tailnetRestartCheck(c *C, tls bool) {
	t := startTailnet(c, tls, false)
	first := t.transfer(1 << 20)
	oldPID := t.derpd.cmd.Process.Pid
	c.Check(t.derpd.Stop(), "stop derpd (SIGTERM)")
	restartAt := time.Now()
	t.derpd.Restart()
	if t.derpd.cmd.Process.Pid == oldPID {
		c.Fatalf("derpd did not restart")
	}
	t.waitHomeDERP()
	reconnect := time.Since(restartAt)
	before := t.counters()
	st := t.transfer(tailnetTransfer)
	via := t.throughDerpd(before, t.counters(), tailnetTransfer)
	c.Passf("%d MB each way before; derpd stopped (SIGTERM) and restarted on :%d with the same key; both nodes home again in %.1f s; then %s; %s",
		first.bytes>>20, t.derpd.Port, reconnect.Seconds(), st, via)
}

// nodeLogger writes one component's log to a file in the check's directory (kept with
// -keep): upstream's logs are far too verbose for stderr.
func nodeLogger(c *C, name string) func(string, ...any) {
	f, err := os.Create(filepath.Join(c.dir, name+".log"))
	c.Check(err, "node log")
	var mu sync.Mutex
	closed := false
	c.Cleanup(func() { mu.Lock(); closed = true; f.Close(); mu.Unlock() })
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			fmt.Fprintf(f, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
		}
	}
}

// tailnetIsolationCheck shows what the tailnet checks run in: the suite's namespace with
// lo as its only interface, no IPv4 route outside the local table, and a socket aimed at
// another machine refused by the kernel before any packet is sent (connect on UDP only
// looks up the route).
func tailnetIsolationCheck(c *C) {
	if os.Getenv(netnsEnv) == "" {
		c.Passf("-no-netns: not isolated by the suite; the tailnet checks rely on their envknobs (%s) alone", tailnetKnobList)
		return
	}
	ifs, err := net.Interfaces()
	c.Check(err, "interfaces")
	var desc []string
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		desc = append(desc, fmt.Sprintf("%s %v", ifc.Name, addrs))
		if ifc.Name != "lo" {
			c.Fatalf("interface %s in the suite's namespace: %v", ifc.Name, desc)
		}
	}
	routes := strings.Split(strings.TrimSpace(readFile("/proc/net/route")), "\n")
	if len(routes) > 1 {
		c.Fatalf("IPv4 routes in the suite's namespace: %q", routes[1:])
	}
	for _, dst := range []string{"198.51.100.1:9", "[2001:db8::1]:9"} {
		conn, err := net.Dial("udp", dst)
		if err == nil {
			conn.Close()
			c.Fatalf("a route to %s from the suite's namespace", dst)
		}
		if !errors.Is(err, syscall.ENETUNREACH) {
			c.Fatalf("connect to %s: %v, want ENETUNREACH", dst, err)
		}
	}
	c.Passf("interfaces %v; no IPv4 route; connect to 198.51.100.1 and 2001:db8::1: network is unreachable; envknobs %s", desc, tailnetKnobList)
}
