package main

// Upstream's DERP client (tailscale.com/derp and derp/derphttp, as tailscaled uses them)
// against derpd: login, packets, ping/pong, keepalives, NotePreferred, PeerGone, the
// mesh watcher and ServerRestarting, each on plain HTTP, on TLS and over WebSocket
// (plain and TLS). The TLS-only checks (certificate, fast start, TLS 1.2) are in
// client_tls.go, the WebSocket mode and its largest packet in client_ws.go.
//
// WebSocket: derphttp dials WebSocket only when built with the ts_debug_websockets tag
// (run.sh builds the suite with it) and TS_DEBUG_DERP_WS_CLIENT is true at connect
// time; the ws checks set the variable for their own duration and assert from derpd's
// derp_websocket_accepts that WebSocket was really used. derphttp's WebSocket path never
// sends WatchConns, so the mesh watcher has no ws variant.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/disco"
	"tailscale.com/net/netmon"
	"tailscale.com/types/key"
)

// transport is one way upstream's client reaches derpd.
type transport struct {
	name string
	tls  bool
	ws   bool
}

var transports = []transport{
	{"http", false, false},
	{"tls", true, false},
	{"ws", false, true}, // WebSocket over plain HTTP
	{"wss", true, true}, // WebSocket over TLS, as browsers connect
}

func init() {
	for _, tr := range transports {
		tr := tr
		reg := func(what string, fn func(c *C, tr transport)) {
			register("client/"+tr.name+"/"+what, func(c *C) { fn(c, tr) })
		}
		reg("login", checkLogin)
		reg("packets", checkPackets)
		reg("ping", checkPing)
		reg("keepalive", checkKeepAlive)
		reg("prefer", checkPrefer)
		reg("peer-gone", checkPeerGone)
		reg("not-here", checkNotHere)
		if !tr.ws {
			reg("mesh-watch", checkMeshWatch)
			reg("mesh-refused", checkMeshRefused)
		}
		reg("restart", checkRestart)
		if tr.ws {
			reg("max-packet", checkWSMaxPacket)
		}
	}
}

// ---- the client environment --------------------------------------------------------

// wsMu keeps one check at a time in WebSocket mode (the knob is process-wide).
var wsMu sync.Mutex

// env is a derpd started for one transport, and the clients made against it.
type env struct {
	c       *C
	tr      transport
	s       *Server
	wsConns int // WebSocket connections the clients made (checked against derpd's counter)
}

// newEnv starts derpd for tr (with --verbose: some checks read its log).
func newEnv(c *C, tr transport, o ServerOpts) *env {
	o.TLS = tr.tls
	o.Args = append([]string{"--verbose"}, o.Args...)
	if tr.ws {
		wsMode(c)
	}
	return &env{c: c, tr: tr, s: StartDerpd(c, o)}
}

// rmsg is one result of RecvDetail, its packet data copied (Recv's may alias).
type rmsg struct {
	m   derp.ReceivedMessage
	gen int
	err error
	at  time.Time
}

// tclient is an upstream derphttp.Client with a goroutine that keeps calling RecvDetail
// the way magicsock does (so it also reconnects by itself after an error).
type tclient struct {
	e     *env
	name  string
	priv  key.NodePrivate
	pub   key.NodePublic
	cl    *derphttp.Client
	msgs  chan rmsg
	stop  chan struct{}
	done  chan struct{}
	start time.Time
	once  sync.Once
}

// newClient makes a client; connect with dial.
func (e *env) newClient(name string) *tclient {
	priv := key.NewNode()
	logf := func(format string, args ...any) { e.c.Logf("%s: "+format, append([]any{name}, args...)...) }
	cl, err := derphttp.NewClient(priv, e.s.URL(), logf, netmon.NewStatic())
	e.c.Check(err, "derphttp.NewClient")
	t := &tclient{e: e, name: name, priv: priv, pub: priv.Public(), cl: cl,
		msgs: make(chan rmsg, 4096), stop: make(chan struct{}), done: make(chan struct{})}
	e.c.Cleanup(t.Close)
	return t
}

// dial connects, starts the receive loop and waits for ServerInfo, which upstream's
// client expects as the first message.
func (t *tclient) dial() derp.ServerInfoMessage {
	c := t.e.c
	ctx, cancel := context.WithTimeout(c.Ctx, 10*time.Second)
	defer cancel()
	t.start = time.Now()
	c.Check(t.cl.Connect(ctx), t.name+": connect to "+t.e.s.URL())
	go t.recvLoop()
	m := t.next(5 * time.Second)
	si, ok := m.m.(derp.ServerInfoMessage)
	if !ok {
		c.Fatalf("%s: first message is %T %v, want ServerInfo", t.name, m.m, m.m)
	}
	if got := t.cl.ServerPublicKey(); got != t.e.s.Public {
		c.Fatalf("%s: server key %s, key file says %s", t.name, got.ShortString(), t.e.s.Public.ShortString())
	}
	if t.e.tr.ws {
		t.e.wsConns++
		t.e.wantWebSockets()
	}
	return si
}

// wantWebSockets fails the check unless derpd accepted as many WebSocket connections as
// the clients made (a suite built without ts_debug_websockets would silently use HTTP).
func (e *env) wantWebSockets() {
	if n := e.s.Metric("derp_websocket_accepts"); int(n) < e.wsConns {
		e.c.Fatalf("derpd counted %v WebSocket accepts, the clients made %d: is the suite built with -tags ts_debug_websockets?", n, e.wsConns)
	}
}

func (t *tclient) recvLoop() {
	defer close(t.done)
	for {
		m, gen, err := t.cl.RecvDetail()
		select {
		case <-t.stop:
			return
		default:
		}
		if rp, ok := m.(derp.ReceivedPacket); ok {
			rp.Data = append([]byte(nil), rp.Data...)
			m = rp
		}
		r := rmsg{m: m, gen: gen, err: err, at: time.Now()}
		if err != nil {
			select { // errors repeat while the server is away: never block on them
			case t.msgs <- r:
			default:
			}
			select {
			case <-t.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case t.msgs <- r:
		case <-t.stop:
			return
		}
	}
}

// Close closes the client and waits for its receive loop.
func (t *tclient) Close() {
	t.once.Do(func() {
		close(t.stop)
		t.cl.Close()
		if t.start.IsZero() {
			return
		}
		select {
		case <-t.done:
		case <-time.After(5 * time.Second):
			t.e.c.Logf("%s: receive loop did not end", t.name)
		}
	})
}

// next is the next message or error, failing the check after timeout.
func (t *tclient) next(timeout time.Duration) rmsg {
	select {
	case m := <-t.msgs:
		return m
	case <-time.After(timeout):
		t.e.c.Fatalf("%s: nothing received within %v", t.name, timeout)
	case <-t.e.c.Ctx.Done():
		t.e.c.Fatalf("%s: check ended", t.name)
	}
	panic("unreachable")
}

// await returns the first message for which match is true, skipping others (and
// errors), failing the check after timeout. skipped is what was passed over.
func (t *tclient) await(timeout time.Duration, what string, match func(rmsg) bool) (m rmsg, skipped []rmsg) {
	m, skipped, err := t.awaitE(timeout, what, match)
	t.e.c.Check(err, t.name)
	return m, skipped
}

// awaitE is await returning an error instead of failing (for other goroutines).
func (t *tclient) awaitE(timeout time.Duration, what string, match func(rmsg) bool) (m rmsg, skipped []rmsg, err error) {
	deadline := time.After(timeout)
	for {
		select {
		case m := <-t.msgs:
			if match(m) {
				return m, skipped, nil
			}
			skipped = append(skipped, m)
		case <-deadline:
			return m, skipped, fmt.Errorf("no %s within %v (got instead: %s)", what, timeout, describe(skipped))
		case <-t.e.c.Ctx.Done():
			return m, skipped, fmt.Errorf("check ended waiting for %s", what)
		}
	}
}

// isPacket, isErr etc. are await's usual predicates.
func isPacket(m rmsg) bool { _, ok := m.m.(derp.ReceivedPacket); return m.err == nil && ok }
func isErr(m rmsg) bool    { return m.err != nil }

func describe(ms []rmsg) string {
	if len(ms) == 0 {
		return "nothing"
	}
	var b []string
	for i, m := range ms {
		if i == 8 {
			b = append(b, fmt.Sprintf("... %d more", len(ms)-i))
			break
		}
		if m.err != nil {
			b = append(b, "error "+m.err.Error())
		} else {
			b = append(b, fmt.Sprintf("%T", m.m))
		}
	}
	return strings.Join(b, ", ")
}

// pair connects two clients.
func (e *env) pair() (a, b *tclient) {
	a, b = e.newClient("A"), e.newClient("B")
	a.dial()
	b.dial()
	return a, b
}

// sumMetric adds every series of /debug/varz whose name starts with prefix.
func (e *env) sumMetric(prefix string) float64 {
	m, err := e.s.Varz()
	e.c.Check(err, "varz")
	sum := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			sum += v
		}
	}
	return sum
}

// waitMetric waits until a series of derpd's /debug/varz has the value want.
func (e *env) waitMetric(series string, want float64) {
	e.c.Eventually(5*time.Second, fmt.Sprintf("%s == %v", series, want), func() error {
		if v := e.s.Metric(series); v != want {
			return fmt.Errorf("%s is %v", series, v)
		}
		return nil
	})
}

// ---- login ---------------------------------------------------------------------------

func checkLogin(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	t := e.newClient("A")
	si := t.dial()
	took := time.Since(t.start)
	e.waitMetric("derp_current_connections", 1)
	e.waitMetric("derp_clients_local", 1)
	detail := fmt.Sprintf("logged in to %s in %v: ServerInfo first (token bucket %d/%d), server key %s as in the key file",
		e.s.URL(), took.Round(time.Millisecond), si.TokenBucketBytesPerSecond, si.TokenBucketBytesBurst, t.cl.ServerPublicKey().ShortString())
	if tr.ws {
		detail += fmt.Sprintf(", derp_websocket_accepts %v", e.s.Metric("derp_websocket_accepts"))
	}
	c.Passf("%s, derp_current_connections 1", detail)
}

// ---- packets -------------------------------------------------------------------------

var packetSizes = []int{0, 1, 1200, 16384, derp.MaxPacketSize}

// wsPacketSizes: over WebSocket upstream's client sends and reads each message with
// its library's default limit of 32768 bytes (derper's too), so a 64 KiB packet is
// beyond what it can send or take; checkWSBigPacket shows what happens then.
var wsPacketSizes = []int{0, 1, 1200, 16384, 32768}

// packetSeq is rounds x sizes packets, each filled from its own seed, so every
// byte and the position in the sequence can be checked.
func packetSeq(tag uint64, rounds int, sizes []int) [][]byte {
	var seq [][]byte
	for r := 0; r < rounds; r++ {
		for _, n := range sizes {
			p := make([]byte, n)
			var seed [32]byte
			seed[0], seed[1], seed[2] = byte(tag), byte(len(seq)), byte(len(seq)>>8)
			rand.NewChaCha8(seed).Read(p)
			seq = append(seq, p)
		}
	}
	return seq
}

// sendSeq sends seq from a to b; receiveSeq checks b got it intact and in order.
func sendSeq(a, b *tclient, seq [][]byte) error {
	for i, p := range seq {
		if err := a.cl.Send(b.pub, p); err != nil {
			return fmt.Errorf("%s: send #%d (%d bytes): %v", a.name, i, len(p), err)
		}
	}
	return nil
}

func receiveSeq(from, to *tclient, seq [][]byte) (bytes int, err error) {
	for i, want := range seq {
		m, _, err := to.awaitE(10*time.Second, fmt.Sprintf("packet #%d of %d from %s", i, len(seq), from.name), isPacket)
		if err != nil {
			return bytes, fmt.Errorf("%s: %v", to.name, err)
		}
		rp := m.m.(derp.ReceivedPacket)
		if rp.Source != from.pub {
			return bytes, fmt.Errorf("%s: packet #%d from %s, want %s", to.name, i, rp.Source.ShortString(), from.pub.ShortString())
		}
		if len(rp.Data) != len(want) {
			return bytes, fmt.Errorf("%s: packet #%d from %s: %d bytes, want %d (lost or reordered)", to.name, i, from.name, len(rp.Data), len(want))
		}
		for j := range want {
			if rp.Data[j] != want[j] {
				return bytes, fmt.Errorf("%s: packet #%d (%d bytes) from %s differs at byte %d", to.name, i, len(want), from.name, j)
			}
		}
		bytes += len(want)
	}
	return bytes, nil
}

func checkPackets(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	a, b := e.pair()
	// 3 rounds of the 5 sizes: 15 packets each way, under the 32-packet queue, sent
	// both ways at once.
	sizes := packetSizes
	if tr.ws {
		sizes = wsPacketSizes
	}
	ab, ba := packetSeq(1, 3, sizes), packetSeq(2, 3, sizes)
	start := time.Now()
	errs := make(chan error, 4)
	var nab, nba int
	go func() { errs <- sendSeq(a, b, ab) }()
	go func() { errs <- sendSeq(b, a, ba) }()
	go func() { var err error; nab, err = receiveSeq(a, b, ab); errs <- err }()
	go func() { var err error; nba, err = receiveSeq(b, a, ba); errs <- err }()
	for range 4 {
		c.Check(<-errs, "packets")
	}
	took := time.Since(start)
	drops := e.sumMetric("derp_packets_dropped{")
	recvd := e.s.Metric("derp_bytes_received")
	if drops != 0 {
		c.Fatalf("derpd counted %v dropped packets", drops)
	}
	if recvd != float64(nab+nba) {
		c.Fatalf("derp_bytes_received %v, sent %d", recvd, nab+nba)
	}
	if tr.ws {
		e.wantWebSockets()
	}
	c.Passf("%d packets of %v bytes each way at once, every byte intact and in order: A->B %d B, B->A %d B in %v; derp_bytes_received %v, 0 dropped",
		len(ab), sizes, nab, nba, took.Round(time.Millisecond), recvd)
}

// ---- ping / pong ---------------------------------------------------------------------

func checkPing(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	t := e.newClient("A")
	t.dial()
	const n = 5
	var rtts []string
	for i := range n {
		var data [8]byte
		v := uint64(0x0123456789abcd00) + uint64(i)
		for j := range data {
			data[j] = byte(v >> (56 - 8*j))
		}
		start := time.Now()
		c.Check(t.cl.SendPing(data), "SendPing")
		m, _ := t.await(5*time.Second, fmt.Sprintf("pong %x", data), func(m rmsg) bool {
			p, ok := m.m.(derp.PongMessage)
			return ok && p == derp.PongMessage(data)
		})
		rtts = append(rtts, m.at.Sub(start).Round(10*time.Microsecond).String())
	}
	// derphttp's own Ping matches the pong inside RecvDetail (which the receive loop
	// is calling) and returns when it arrives.
	ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	c.Check(t.cl.Ping(ctx), "derphttp Client.Ping")
	pingRTT := time.Since(start)
	e.waitMetric("derp_got_ping", n+1)
	e.waitMetric("derp_sent_pong", n+1)
	c.Passf("%d SendPing answered by the matching Pong (rtt %s); Client.Ping returned in %v; derp_got_ping = derp_sent_pong = %d",
		n, strings.Join(rtts, " "), pingRTT.Round(10*time.Microsecond), n+1)
}

// ---- keepalives ----------------------------------------------------------------------

func checkKeepAlive(c *C, tr transport) {
	const interval = 100 * time.Millisecond
	e := newEnv(c, tr, ServerOpts{Args: []string{"--keepalive-interval", interval.String()}})
	t := e.newClient("A")
	t.dial()
	// The first keepalive comes after the interval plus a jitter of up to 5 s (as
	// upstream's), then one per interval.
	const want = 3
	var at []time.Time
	var other []rmsg
	for len(at) < want {
		m, skipped := t.await(5*time.Second+2*interval, "KeepAlive", func(m rmsg) bool {
			_, ok := m.m.(derp.KeepAliveMessage)
			return ok
		})
		other = append(other, skipped...)
		at = append(at, m.at)
	}
	if len(other) != 0 {
		c.Fatalf("idle client got %s besides keepalives", describe(other))
	}
	var gaps []string
	for i := 1; i < len(at); i++ {
		gap := at[i].Sub(at[i-1])
		if gap < interval/2 {
			c.Fatalf("keepalives %v apart with --keepalive-interval %v", gap, interval)
		}
		gaps = append(gaps, gap.Round(time.Millisecond).String())
	}
	c.Passf("idle client got %d KeepAliveMessage: first %v after login, then %s apart (--keepalive-interval %v)",
		want, at[0].Sub(t.start).Round(time.Millisecond), strings.Join(gaps, ", "), interval)
}

// ---- NotePreferred -------------------------------------------------------------------

func checkPrefer(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	// A says so before connecting: derphttp sends NotePreferred(true) right after login.
	a := e.newClient("A")
	a.cl.NotePreferred(true)
	a.dial()
	e.waitMetric("derp_current_home_connections", 1)
	b := e.newClient("B")
	b.dial()
	b.cl.NotePreferred(true)
	e.waitMetric("derp_current_home_connections", 2)
	b.cl.NotePreferred(false)
	e.waitMetric("derp_current_home_connections", 1)
	// Both connections stayed up and are the ones they were (no reconnect).
	ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
	defer cancel()
	for _, t := range []*tclient{a, b} {
		c.Check(t.cl.Ping(ctx), t.name+": ping after NotePreferred")
		c.Check(t.cl.Send(t.pub, []byte("self")), t.name+": send to self")
		m, _ := t.await(5*time.Second, "own packet", isPacket)
		if m.gen != 1 {
			c.Fatalf("%s reconnected (connection generation %d)", t.name, m.gen)
		}
	}
	if n := e.s.Metric("derp_current_connections"); n != 2 {
		c.Fatalf("derp_current_connections %v, want 2", n)
	}
	a.Close()
	e.waitMetric("derp_current_home_connections", 0)
	c.Passf("derp_current_home_connections 1 (set before connect) -> 2 -> 1 (B false) -> 0 (A left); both connections stayed up (ping, a packet to self, generation 1)")
}

// ---- PeerGone ------------------------------------------------------------------------

func checkPeerGone(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	a, b := e.pair()
	// derpd, like derper, tells A that B left only once A has heard from B.
	c.Check(b.cl.Send(a.pub, []byte("hello from B")), "B sends")
	a.await(5*time.Second, "B's packet", func(m rmsg) bool {
		rp, ok := m.m.(derp.ReceivedPacket)
		return ok && rp.Source == b.pub
	})
	left := time.Now()
	b.Close()
	m, _ := a.await(5*time.Second, "PeerGone for B", func(m rmsg) bool {
		_, ok := m.m.(derp.PeerGoneMessage)
		return ok
	})
	pg := m.m.(derp.PeerGoneMessage)
	if pg.Peer != b.pub || pg.Reason != derp.PeerGoneReasonDisconnected {
		c.Fatalf("PeerGone %s reason %d, want %s reason %d (disconnected)", pg.Peer.ShortString(), pg.Reason, b.pub.ShortString(), derp.PeerGoneReasonDisconnected)
	}
	e.waitMetric("derp_peer_gone_disconnected_frames", 1)
	c.Passf("B left %v before A got PeerGone(%s, disconnected); derp_peer_gone_disconnected_frames 1",
		m.at.Sub(left).Round(time.Millisecond), pg.Peer.ShortString())
}

// discoPing is a disco Ping packet built as magicsock builds one: magic, the sender's
// disco key, then the message sealed to the receiver's disco key.
func discoPing(from key.NodePublic) []byte {
	mine, theirs := key.NewDisco(), key.NewDisco().Public()
	msg := &disco.Ping{NodeKey: from}
	rand.NewChaCha8([32]byte{9}).Read(msg.TxID[:])
	pkt := append([]byte(disco.Magic), mine.Public().AppendTo(nil)...)
	return append(pkt, mine.Shared(theirs).Seal(msg.AppendMarshal(nil))...)
}

func checkNotHere(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	a := e.newClient("A")
	a.dial()
	other, unknown := key.NewNode().Public(), key.NewNode().Public()
	pkt := discoPing(a.pub)
	if !disco.LooksLikeDiscoWrapper(pkt) {
		c.Fatalf("built disco packet does not look like disco")
	}
	// A non-disco packet to an unknown key gets no PeerGone, the disco one after it
	// does: the first PeerGone A sees must be for the disco packet's destination.
	c.Check(a.cl.Send(other, []byte("not disco, to nobody")), "send non-disco")
	sent := time.Now()
	c.Check(a.cl.Send(unknown, pkt), "send disco")
	m, _ := a.await(5*time.Second, "PeerGone", func(m rmsg) bool {
		_, ok := m.m.(derp.PeerGoneMessage)
		return ok
	})
	pg := m.m.(derp.PeerGoneMessage)
	if pg.Peer != unknown || pg.Reason != derp.PeerGoneReasonNotHere {
		c.Fatalf("first PeerGone is for %s reason %d, want %s (the disco packet's destination) reason %d (not here); the non-disco packet went to %s",
			pg.Peer.ShortString(), pg.Reason, unknown.ShortString(), derp.PeerGoneReasonNotHere, other.ShortString())
	}
	e.waitMetric("derp_peer_gone_not_here_frames", 1)
	e.waitMetric(`derp_packets_dropped{reason="unknown_dest",kind="disco"}`, 1)
	e.waitMetric(`derp_packets_dropped{reason="unknown_dest",kind="other"}`, 1)
	c.Passf("disco Ping (%d bytes, magic %q) to an unknown key: PeerGone(not here) after %v; the non-disco packet sent before it got none; unknown_dest drops disco 1, other 1",
		len(pkt), disco.Magic, m.at.Sub(sent).Round(time.Millisecond))
}

// ---- the mesh watcher ----------------------------------------------------------------

// watcher runs upstream's RunWatchConnectionLoop and reports what it calls.
type watcher struct {
	cl     *derphttp.Client
	pub    key.NodePublic
	events chan any // derp.PeerPresentMessage, derp.PeerGoneMessage or error
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) startWatcher(meshKey string) *watcher {
	c := e.c
	priv := key.NewNode()
	cl, err := derphttp.NewClient(priv, e.s.URL(), func(format string, args ...any) { c.Logf("watcher: "+format, args...) }, netmon.NewStatic())
	c.Check(err, "derphttp.NewClient")
	if meshKey != "" {
		cl.MeshKey, err = key.ParseDERPMesh(meshKey)
		c.Check(err, "ParseDERPMesh")
	}
	ctx, cancel := context.WithCancel(c.Ctx)
	w := &watcher{cl: cl, pub: priv.Public(), events: make(chan any, 256), cancel: cancel, done: make(chan struct{})}
	push := func(v any) {
		select {
		case w.events <- v:
		case <-ctx.Done():
		}
	}
	go func() {
		defer close(w.done)
		// ignoreServerKey: the zero key (derper passes its own key, to skip itself).
		cl.RunWatchConnectionLoop(ctx, key.NodePublic{}, c.Logf,
			func(m derp.PeerPresentMessage) { push(m) },
			func(m derp.PeerGoneMessage) { push(m) },
			func(err error) { push(err) })
	}()
	c.Cleanup(func() {
		cancel()
		cl.Close()
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			c.Logf("watch loop did not end")
		}
	})
	return w
}

// next is the watcher's next event, failing after timeout.
func (w *watcher) next(c *C, timeout time.Duration, what string) any {
	select {
	case v := <-w.events:
		return v
	case <-time.After(timeout):
		c.Fatalf("watcher: no %s within %v", what, timeout)
	}
	panic("unreachable")
}

// present waits for add(k) and returns it.
func (w *watcher) present(c *C, k key.NodePublic) derp.PeerPresentMessage {
	for {
		switch v := w.next(c, 5*time.Second, "peer present for "+k.ShortString()).(type) {
		case derp.PeerPresentMessage:
			if v.Key == k {
				return v
			}
		case derp.PeerGoneMessage:
			c.Fatalf("watcher: gone %s while waiting for %s present", v.Peer.ShortString(), k.ShortString())
		case error:
			c.Fatalf("watcher: %v", v)
		}
	}
}

// gone waits for remove(k) and returns it.
func (w *watcher) gone(c *C, k key.NodePublic) derp.PeerGoneMessage {
	for {
		switch v := w.next(c, 5*time.Second, "peer gone for "+k.ShortString()).(type) {
		case derp.PeerGoneMessage:
			if v.Peer == k {
				return v
			}
			c.Fatalf("watcher: gone %s while waiting for %s gone", v.Peer.ShortString(), k.ShortString())
		case error:
			c.Fatalf("watcher: %v", v)
		}
	}
}

func checkMeshWatch(c *C, tr transport) {
	mk := NewMeshKey()
	e := newEnv(c, tr, ServerOpts{MeshKey: mk})
	w := e.startWatcher(mk)
	// The first flood lists every connected key, the watcher's own included (as derper).
	self := w.present(c, w.pub)
	if self.Flags&derp.PeerPresentIsMeshPeer == 0 {
		c.Fatalf("watcher's own PeerPresent flags %#x, want the mesh-peer bit", self.Flags)
	}
	e.waitMetric("derp_watchers", 1)

	x := e.newClient("X")
	x.dial()
	y := e.newClient("Y")
	y.cl.IsProber = true
	y.dial()
	var seen []string
	for _, t := range []*tclient{x, y} {
		p := w.present(c, t.pub)
		la, err := t.cl.LocalAddr()
		c.Check(err, t.name+": LocalAddr")
		if p.IPPort != la {
			c.Fatalf("PeerPresent for %s at %v, the client's local address is %v", t.name, p.IPPort, la)
		}
		want := derp.PeerPresentFlags(derp.PeerPresentIsRegular)
		if t.cl.IsProber {
			want = derp.PeerPresentIsProber
		}
		if p.Flags != want {
			c.Fatalf("PeerPresent for %s flags %#x, want %#x", t.name, p.Flags, want)
		}
		seen = append(seen, fmt.Sprintf("%s %v flags %#x", t.name, p.IPPort, p.Flags))
	}
	x.Close()
	gx := w.gone(c, x.pub)
	y.Close()
	gy := w.gone(c, y.pub)
	for _, g := range []derp.PeerGoneMessage{gx, gy} {
		if g.Reason != derp.PeerGoneReasonDisconnected {
			c.Fatalf("watcher: gone %s reason %d, want disconnected", g.Peer.ShortString(), g.Reason)
		}
	}
	c.Passf("RunWatchConnectionLoop with the mesh key: itself present (flags %#x), then present %s; gone X, gone Y (disconnected); derp_watchers 1",
		self.Flags, strings.Join(seen, ", "))
}

// checkMeshRefused: a watcher without the mesh key, or with a wrong one, logs in as an
// ordinary client and its WatchConns closes the connection ("insufficient permissions",
// as derper's handleFrameWatchConns); it never hears of a peer.
func checkMeshRefused(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{MeshKey: NewMeshKey()})
	x := e.newClient("X")
	x.dial()
	var got []string
	for _, tc := range []struct{ name, key string }{{"no key", ""}, {"wrong key", NewMeshKey()}} {
		w := e.startWatcher(tc.key)
		switch v := w.next(c, 5*time.Second, "refusal").(type) {
		case error:
			got = append(got, fmt.Sprintf("%s: %v", tc.name, v))
		default:
			c.Fatalf("watcher with %s got %T %+v; want the connection closed", tc.name, v, v)
		}
		w.cancel()
		w.cl.Close()
		// Nothing but errors (the loop may have tried again) came after.
		for {
			select {
			case v := <-w.events:
				if _, ok := v.(error); !ok {
					c.Fatalf("watcher with %s got %T %+v", tc.name, v, v)
				}
				continue
			default:
			}
			break
		}
		if n := e.s.Metric("derp_watchers"); n != 0 {
			c.Fatalf("derp_watchers %v after a watcher with %s", n, tc.name)
		}
	}
	log := e.s.Log()
	if n := strings.Count(log, "insufficient permissions for watch conns"); n < 2 {
		c.Fatalf("derpd logged %d refusals of WatchConns, want 2", n)
	}
	detail := fmt.Sprintf("closed without any PeerPresent (X was connected), derp_watchers 0: %s", strings.Join(got, "; "))
	if *flagDerper != "" {
		d := &env{c: c, tr: tr, s: StartDerper(c, ServerOpts{TLS: tr.tls, MeshKey: NewMeshKey()})}
		dx := d.newClient("X'")
		dx.dial()
		w := d.startWatcher("")
		if v, ok := w.next(c, 5*time.Second, "refusal by derper").(error); !ok {
			c.Fatalf("derper: a watcher without the key got %T %+v", v, v)
		}
		detail += "; derper closes a watcher without the key the same way"
	}
	c.Passf("%s", detail)
}

// ---- ServerRestarting ----------------------------------------------------------------

func checkRestart(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	a, b := e.pair()
	c.Check(a.cl.Send(b.pub, []byte("before")), "send before restart")
	b.await(5*time.Second, "packet before restart", isPacket)

	stopped := time.Now()
	c.Check(e.s.Stop(), "stop derpd (SIGTERM)")
	stopTook := time.Since(stopped)
	var restarts []derp.ServerRestartingMessage
	for _, t := range []*tclient{a, b} {
		m, _ := t.await(5*time.Second, "ServerRestarting", func(m rmsg) bool { _, ok := m.m.(derp.ServerRestartingMessage); return ok })
		rm := m.m.(derp.ServerRestartingMessage)
		if rm.ReconnectIn <= 0 || rm.TryFor < rm.ReconnectIn || rm.TryFor > time.Minute {
			c.Fatalf("%s: ServerRestarting reconnect in %v, try for %v: not sensible", t.name, rm.ReconnectIn, rm.TryFor)
		}
		restarts = append(restarts, rm)
		// Then the connection ends.
		t.await(5*time.Second, "connection end", isErr)
	}
	restartAt := time.Now()
	e.s.Restart()
	// Each receive loop reconnects by itself: a new ServerInfo on connection 2.
	for _, t := range []*tclient{a, b} {
		m, _ := t.await(10*time.Second, "ServerInfo after restart", func(m rmsg) bool {
			_, ok := m.m.(derp.ServerInfoMessage)
			return m.err == nil && ok
		})
		if m.gen < 2 {
			c.Fatalf("%s: ServerInfo on connection generation %d after restart", t.name, m.gen)
		}
	}
	back := time.Since(restartAt)
	for _, d := range [][2]*tclient{{a, b}, {b, a}} {
		from, to := d[0], d[1]
		msg := []byte("after restart from " + from.name)
		c.Check(from.cl.Send(to.pub, msg), from.name+": send after restart")
		m, _ := to.await(5*time.Second, "packet after restart", isPacket)
		if rp := m.m.(derp.ReceivedPacket); rp.Source != from.pub || string(rp.Data) != string(msg) {
			c.Fatalf("%s: after restart got %q from %s", to.name, rp.Data, rp.Source.ShortString())
		}
	}
	if tr.ws {
		e.wsConns = 2
		e.wantWebSockets()
	}
	c.Passf("SIGTERM: both clients parsed ServerRestarting (reconnect in %v, try for %v), derpd exited in %v; after Restart both reconnected by themselves within %v (connection 2) and exchanged a packet each way",
		restarts[0].ReconnectIn, restarts[0].TryFor, stopTook.Round(time.Millisecond), back.Round(time.Millisecond))
}
