package main

// A mixed region: upstream derper and derpd meshed with one key, each -mesh-with the
// whole region (itself included, as operators write it), with upstream's derphttp
// client on both sides. What derper does across a mesh (derp/derpserver/derpserver.go,
// cmd/derper/mesh.go) is what derpd must do:
//
//   - a SendPacket for a key announced by a peer is forwarded on the sender-side node's
//     own mesh connection, one hop;
//   - a client that received packets from K gets PeerGone(K, Disconnected) when K leaves
//     the region, whichever node K was on (the watcher's PeerGone makes the other node
//     drop its forwarder and notify K's receivers);
//   - a key connected locally wins over a peer's claim, and a peer's claim survives the
//     local connection closing, so a client that connects to the other node before
//     leaving this one keeps receiving;
//   - a broken mesh connection is re-dialled: derper's RunWatchConnectionLoop after 5 s,
//     derpd's watch loop after 5 s too.
//
// derper's mesh client always dials https://host/derp; TS_DEBUG_USE_DERP_HTTP=true (its
// envknob) makes it speak plain HTTP, which is how the plain-HTTP region is built.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

func init() {
	for _, tls := range []bool{false, true} {
		tls := tls
		mode := map[bool]string{false: "http", true: "tls"}[tls]
		register("region/"+mode+"/both-ways", func(c *C) { regionBothWays(c, tls) })
		register("region/"+mode+"/peer-gone", func(c *C) { regionPeerGone(c, tls) })
		register("region/"+mode+"/move", func(c *C) { regionMove(c, tls) })
	}
	register("region/heal", regionHeal)
	register("region/upper-hex-key", regionUpperHexKey)
}

// ---- the region ---------------------------------------------------------------------

type regionOpts struct {
	TLS       bool
	DerperKey string // mesh key file text of each server; "" = one fresh key for both
	DerpdKey  string
	// With TLS: derpd trusts the test CA for its mesh dials through SSL_CERT_FILE (the
	// suite's environment, as derper does) instead of --mesh-ca-file.
	EnvRoots bool
}

// Region is one derper and one derpd meshed with each other.
type Region struct {
	c      *C
	Derper *Server
	Derpd  *Server
}

// StartRegion starts derper, then derpd, each with -mesh-with listing both, and waits
// until each serves the other as a mesh watcher.
func StartRegion(c *C, o regionOpts) *Region {
	if o.DerperKey == "" && o.DerpdKey == "" {
		o.DerperKey = NewMeshKey()
		o.DerpdKey = o.DerperKey
	}
	pu, pd := FreePort(c), FreePort(c)
	host := "127.0.0.1"
	if o.TLS {
		host = Hostname
	}
	meshWith := net.JoinHostPort(host, strconv.Itoa(pu)) + "," + net.JoinHostPort(host, strconv.Itoa(pd))
	var env []string
	if !o.TLS {
		env = []string{"TS_DEBUG_USE_DERP_HTTP=true"}
	}
	derpdArgs := []string{"-mesh-with", meshWith}
	if o.TLS && !o.EnvRoots {
		derpdArgs = append(derpdArgs, "--mesh-ca-file", testCA.CertFile)
	}
	r := &Region{c: c}
	r.Derper = StartDerper(c, ServerOpts{TLS: o.TLS, Port: pu, MeshKey: o.DerperKey,
		Args: []string{"-mesh-with", meshWith}, Env: env})
	r.Derpd = StartDerpd(c, ServerOpts{TLS: o.TLS, Port: pd, MeshKey: o.DerpdKey, Args: derpdArgs})
	r.WaitMeshed(15 * time.Second)
	return r
}

// WaitMeshed waits until each server has the other's mesh connection as a watcher.
func (r *Region) WaitMeshed(timeout time.Duration) {
	r.c.Eventually(timeout, "region meshed", func() error {
		for _, s := range []*Server{r.Derper, r.Derpd} {
			m, err := s.Varz()
			if err != nil {
				return err
			}
			if m["derp_watchers"] != 1 {
				return fmt.Errorf("%s: derp_watchers %v, want 1; log: %s", s.Name, m["derp_watchers"], tail(s.LogFile, 4))
			}
		}
		return nil
	})
}

// ---- a client of the region ---------------------------------------------------------

// Peer is upstream's derphttp client logged in to one node, with its messages sorted
// into channels by a receive loop. The loop keeps calling Recv, so the client
// reconnects by itself (derphttp redials on the next Recv after an error).
type Peer struct {
	c    *C
	Name string
	Priv key.NodePrivate
	Pub  key.NodePublic
	dc   *derphttp.Client
	pkts chan derp.ReceivedPacket
	gone chan derp.PeerGoneMessage
	done chan struct{}
	once sync.Once
}

// DialPeer logs in to s with priv (a fresh key if zero) and starts its receive loop.
func DialPeer(c *C, s *Server, name string, priv key.NodePrivate) *Peer {
	if priv.IsZero() {
		priv = key.NewNode()
	}
	p := &Peer{c: c, Name: name + "@" + s.Name, Priv: priv, Pub: priv.Public(),
		pkts: make(chan derp.ReceivedPacket, 4096), gone: make(chan derp.PeerGoneMessage, 64),
		done: make(chan struct{})}
	dc, err := derphttp.NewClient(priv, s.URL(), logger.Discard, netmon.NewStatic())
	c.Check(err, "NewClient "+p.Name)
	p.dc = dc
	ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
	defer cancel()
	c.Check(dc.Connect(ctx), "connect "+p.Name)
	go p.loop()
	c.Cleanup(p.Close)
	return p
}

func (p *Peer) loop() {
	defer close(p.done)
	for {
		m, err := p.dc.Recv()
		if err != nil {
			if errors.Is(err, derphttp.ErrClientClosed) || p.c.Ctx.Err() != nil {
				return
			}
			// The server went away; the next Recv redials. Pace the redials.
			select {
			case <-time.After(50 * time.Millisecond):
			case <-p.c.Ctx.Done():
				return
			}
			continue
		}
		switch m := m.(type) {
		case derp.ReceivedPacket:
			m.Data = bytes.Clone(m.Data) // Recv reuses its buffer
			select {
			case p.pkts <- m:
			default:
				p.c.Logf("%s: packet channel full, dropped one", p.Name)
			}
		case derp.PeerGoneMessage:
			select {
			case p.gone <- m:
			default:
			}
		}
	}
}

// Close leaves the server and waits for the receive loop to end.
func (p *Peer) Close() {
	p.once.Do(func() {
		p.dc.Close()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	})
}

// Send sends pkt to dst; errors (a server restarting) are the caller's to judge.
func (p *Peer) Send(dst key.NodePublic, pkt []byte) error { return p.dc.Send(dst, pkt) }

// Reach sends fresh probes from a to b every 100 ms until b receives one, failing the
// check after timeout. It returns how long that took. Other packets b receives from a
// meanwhile are discarded.
func Reach(c *C, a, b *Peer, timeout time.Duration) time.Duration {
	start := time.Now()
	deadline := start.Add(timeout)
	prefix := []byte("reach " + a.Name + " -> " + b.Name)
	var lastErr error
	for n := 0; ; n++ {
		if err := a.Send(b.Pub, fmt.Appendf(bytes.Clone(prefix), " %d", n)); err != nil {
			lastErr = err
		}
		tick := time.After(100 * time.Millisecond)
	wait:
		for {
			select {
			case m := <-b.pkts:
				if m.Source == a.Pub && bytes.HasPrefix(m.Data, prefix) {
					return time.Since(start)
				}
			case <-tick:
				break wait
			case <-c.Ctx.Done():
				c.Fatalf("%s", c.Ctx.Err())
			}
		}
		if time.Now().After(deadline) {
			c.Fatalf("%s did not reach %s within %v (last send error: %v)", a.Name, b.Name, timeout, lastErr)
		}
	}
}

// ---- checks --------------------------------------------------------------------------

// seqPacket is a packet of size bytes (at least 8) numbered seq, its contents derived
// from seq so the receiver can check them.
func seqPacket(seq, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(seq))
	for i := 8; i < size; i++ {
		b[i] = byte(seq*7 + i)
	}
	return b
}

var streamSizes = []int{8, 100, 1200, 16384, derp.MaxPacketSize}

// stream sends n numbered packets of streamSizes from a to b, at most 8 in flight (the
// servers' per-client queues drop the oldest when full, as upstream's), and checks each
// arrives intact and in order. It returns the bytes sent.
func stream(c *C, a, b *Peer, n int) int {
	const window = 8
	total := 0
	next := 0
	recvOne := func() {
		select {
		case m := <-b.pkts:
			if m.Source != a.Pub {
				return // a late Reach probe from someone else
			}
			if len(m.Data) < 8 || bytes.HasPrefix(m.Data, []byte("reach ")) {
				return
			}
			got := int(binary.BigEndian.Uint64(m.Data))
			if got != next {
				c.Fatalf("%s -> %s: packet %d arrived where %d was due (lost or reordered)", a.Name, b.Name, got, next)
			}
			want := seqPacket(next, streamSizes[next%len(streamSizes)])
			if !bytes.Equal(m.Data, want) {
				c.Fatalf("%s -> %s: packet %d corrupted (%d bytes, want %d)", a.Name, b.Name, got, len(m.Data), len(want))
			}
			next++
		case <-time.After(5 * time.Second):
			c.Fatalf("%s -> %s: packet %d not received within 5 s", a.Name, b.Name, next)
		}
	}
	for i := 0; i < n; i++ {
		for i-next >= window {
			recvOne()
		}
		pkt := seqPacket(i, streamSizes[i%len(streamSizes)])
		c.Check(a.Send(b.Pub, pkt), "send")
		total += len(pkt)
	}
	for next < n {
		recvOne()
	}
	return total
}

func regionBothWays(c *C, tls bool) {
	r := StartRegion(c, regionOpts{TLS: tls, EnvRoots: true})
	u := DialPeer(c, r.Derper, "a", key.NodePrivate{})
	d := DialPeer(c, r.Derpd, "b", key.NodePrivate{})
	t1 := Reach(c, u, d, 10*time.Second)
	t2 := Reach(c, d, u, 10*time.Second)
	fwdOutU0, fwdInD0 := r.Derper.Metric("derp_packets_forwarded_out"), r.Derpd.Metric("derp_packets_forwarded_in")
	fwdOutD0, fwdInU0 := r.Derpd.Metric("derp_packets_forwarded_out"), r.Derper.Metric("derp_packets_forwarded_in")
	const n = 100
	b1 := stream(c, u, d, n)
	b2 := stream(c, d, u, n)
	fwdOutU := r.Derper.Metric("derp_packets_forwarded_out") - fwdOutU0
	fwdInD := r.Derpd.Metric("derp_packets_forwarded_in") - fwdInD0
	fwdOutD := r.Derpd.Metric("derp_packets_forwarded_out") - fwdOutD0
	fwdInU := r.Derper.Metric("derp_packets_forwarded_in") - fwdInU0
	if fwdOutU < n || fwdInD < n || fwdOutD < n || fwdInU < n {
		c.Fatalf("packets arrived but the forwarding counters disagree: derper out %v / derpd in %v, derpd out %v / derper in %v (want >= %d each)",
			fwdOutU, fwdInD, fwdOutD, fwdInU, n)
	}
	roots := ""
	if tls {
		roots = "derpd trusting the test CA through SSL_CERT_FILE as derper does; "
	}
	c.Passf("%sfirst packet derper->derpd after %v, derpd->derper after %v; %d packets (%d bytes, sizes 8..%d) each way intact and in order; "+
		"forwarded: derper out %v = derpd in %v, derpd out %v = derper in %v",
		roots, t1.Round(time.Millisecond), t2.Round(time.Millisecond), n, b1+b2, derp.MaxPacketSize, fwdOutU, fwdInD, fwdOutD, fwdInU)
}

// waitGone waits for p to be told that peer left, with the reason.
func waitGone(c *C, p *Peer, peer *Peer, timeout time.Duration) (derp.PeerGoneReasonType, time.Duration) {
	start := time.Now()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-p.gone:
			if m.Peer == peer.Pub {
				return m.Reason, time.Since(start)
			}
			c.Logf("%s: PeerGone for another key %s", p.Name, m.Peer.ShortString())
		case <-deadline:
			c.Fatalf("%s got no PeerGone for %s within %v", p.Name, peer.Name, timeout)
		}
	}
}

func regionPeerGone(c *C, tls bool) {
	r := StartRegion(c, regionOpts{TLS: tls})
	var notes []string
	for _, dir := range [][2]*Server{{r.Derpd, r.Derper}, {r.Derper, r.Derpd}} {
		leaver := DialPeer(c, dir[0], "leaver", key.NodePrivate{})
		stayer := DialPeer(c, dir[1], "stayer", key.NodePrivate{})
		Reach(c, leaver, stayer, 10*time.Second) // the stayer has received from the leaver
		leaver.Close()
		reason, took := waitGone(c, stayer, leaver, 5*time.Second)
		if reason != derp.PeerGoneReasonDisconnected {
			c.Fatalf("%s: PeerGone for %s with reason %d, want %d (disconnected)", stayer.Name, leaver.Name, reason, derp.PeerGoneReasonDisconnected)
		}
		notes = append(notes, fmt.Sprintf("%s left, %s got PeerGone(disconnected) after %v",
			leaver.Name, stayer.Name, took.Round(time.Millisecond)))
		stayer.Close()
	}
	c.Passf("%s", strings.Join(notes, "; "))
}

// regionMove: senders on both nodes stream numbered packets to a key that moves
// derper -> derpd -> derper, connecting to the new node before leaving the old one (as
// a client changing its home node does). After each move both senders' packets reach
// it on its new connection.
func regionMove(c *C, tls bool) {
	r := StartRegion(c, regionOpts{TLS: tls})
	su := DialPeer(c, r.Derper, "sender", key.NodePrivate{})
	sd := DialPeer(c, r.Derpd, "sender", key.NodePrivate{})
	mover := key.NewNode()
	m := DialPeer(c, r.Derper, "mover", mover)
	Reach(c, su, m, 10*time.Second)
	Reach(c, sd, m, 10*time.Second)

	// Each sender sends a numbered packet every 10 ms until stopped.
	ctx, stop := context.WithCancel(c.Ctx)
	var wg sync.WaitGroup
	for _, s := range []*Peer{su, sd} {
		wg.Add(1)
		go func(s *Peer) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				s.Send(mover.Public(), fmt.Appendf(nil, "seq %d", i))
				time.Sleep(10 * time.Millisecond)
			}
		}(s)
	}
	defer func() { stop(); wg.Wait() }()

	// untilBoth waits until p receives a sequenced packet from each sender.
	untilBoth := func(p *Peer) time.Duration {
		start := time.Now()
		seen := map[key.NodePublic]bool{}
		deadline := time.After(10 * time.Second)
		for len(seen) < 2 {
			select {
			case pk := <-p.pkts:
				if bytes.HasPrefix(pk.Data, []byte("seq ")) {
					seen[pk.Source] = true
				}
			case <-deadline:
				c.Fatalf("after moving to %s the mover received from %d of 2 senders within 10 s", p.Name, len(seen))
			}
		}
		return time.Since(start)
	}
	untilBoth(m)
	var notes []string
	for _, to := range []*Server{r.Derpd, r.Derper} {
		old := m
		m = DialPeer(c, to, "mover", mover)
		old.Close()
		// The old connection is gone: both senders' packets must now reach the new one.
		took := untilBoth(m)
		notes = append(notes, fmt.Sprintf("moved to %s: packets from both senders within %v", to.Name, took.Round(time.Millisecond)))
	}
	c.Passf("%s", strings.Join(notes, "; "))
}

// regionHeal: derpd is killed (SIGKILL) and restarted on the same port with the same
// key; clients on both sides reconnect by themselves and packets flow both ways again.
func regionHeal(c *C) {
	r := StartRegion(c, regionOpts{})
	u := DialPeer(c, r.Derper, "a", key.NodePrivate{})
	d := DialPeer(c, r.Derpd, "b", key.NodePrivate{})
	Reach(c, u, d, 10*time.Second)
	Reach(c, d, u, 10*time.Second)

	killed := time.Now()
	r.Derpd.Kill()
	r.Derpd.Restart()
	restarted := time.Now()
	var wg sync.WaitGroup
	var tUD, tDU time.Duration
	wg.Add(2)
	fail := make(chan string, 2)
	run := func(f func()) {
		defer wg.Done()
		defer func() {
			if x := recover(); x != nil {
				if fl, ok := x.(failure); ok {
					fail <- fl.msg
					return
				}
				panic(x)
			}
		}()
		f()
	}
	go run(func() { tUD = Reach(c, u, d, 10*time.Second) })
	go run(func() { tDU = Reach(c, d, u, 10*time.Second) })
	wg.Wait()
	select {
	case msg := <-fail:
		c.Fatalf("region did not heal: %s", msg)
	default:
	}
	healed := max(tUD, tDU)
	if healed > 10*time.Second {
		c.Fatalf("region healed only after %v", healed)
	}
	r.WaitMeshed(5 * time.Second)
	c.Passf("derpd killed and restarted (%v to serve again); packets flow both ways again %v after the restart "+
		"(derper->derpd %v, derpd->derper %v), %v after the kill",
		restarted.Sub(killed).Round(time.Millisecond), healed.Round(time.Millisecond),
		tUD.Round(time.Millisecond), tDU.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}

// regionUpperHexKey: mesh key files written in upper-case hex. derper (v1.102.5) parses
// the file into 32 bytes (key.ParseDERPMesh), sends them as lower-case hex and compares
// bytes; derpd must interoperate whether both files are upper-case or only its own is.
func regionUpperHexKey(c *C) {
	k := NewMeshKey()
	var notes []string
	for _, o := range []regionOpts{
		{DerperKey: strings.ToUpper(k), DerpdKey: strings.ToUpper(k)},
		{DerperKey: k, DerpdKey: "  " + strings.ToUpper(k) + " \n"},
	} {
		r := StartRegion(c, o)
		u := DialPeer(c, r.Derper, "a", key.NodePrivate{})
		d := DialPeer(c, r.Derpd, "b", key.NodePrivate{})
		t1 := Reach(c, u, d, 10*time.Second)
		t2 := Reach(c, d, u, 10*time.Second)
		what := "both key files upper-case"
		if o.DerperKey == k {
			what = "derper's key file lower-case, derpd's upper-case with white space"
		}
		notes = append(notes, fmt.Sprintf("%s: meshed, packets both ways (%v, %v)", what,
			t1.Round(time.Millisecond), t2.Round(time.Millisecond)))
		r.Derper.Stop()
		r.Derpd.Stop()
	}
	c.Passf("%s", strings.Join(notes, "; "))
}
