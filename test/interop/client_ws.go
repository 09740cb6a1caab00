package main

// Upstream's DERP client over WebSocket: how the checks switch derphttp to WebSocket, and
// the largest packet over it (beside derper, when the suite has it).

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"tailscale.com/derp"
)

// wsMode makes derphttp clients of this check connect over WebSocket.
func wsMode(c *C) {
	wsMu.Lock()
	c.Check(os.Setenv("TS_DEBUG_DERP_WS_CLIENT", "true"), "setenv")
	c.Cleanup(func() {
		os.Unsetenv("TS_DEBUG_DERP_WS_CLIENT")
		wsMu.Unlock()
	})
	quietStdLog(c) // derphttp's WebSocket dialer logs every connection there
}

// quietStdLog silences the standard logger (upstream code logs there) for this check,
// unless -v.
func quietStdLog(c *C) {
	if *flagVerbose {
		return
	}
	log.SetOutput(io.Discard)
	c.Cleanup(func() { log.SetOutput(os.Stderr) })
}

// ---- the largest packet over WebSocket ------------------------------------------------

// checkWSMaxPacket: upstream's WebSocket library (derper's and the clients') reads
// messages of at most 32768 bytes. derpd cuts what it sends into messages that size, so
// a WebSocket client receives a derp.MaxPacketSize packet intact (derper sends it as one
// longer message, which the client refuses); a WebSocket client sending one (upstream's
// client writes it as a ~61 KB message) is closed with 1009 by derpd and derper alike.
func checkWSMaxPacket(c *C, tr transport) {
	e := newEnv(c, tr, ServerOpts{})
	got := wsMaxPacket(e)
	detail := fmt.Sprintf("derpd: %s", got)
	if *flagDerper != "" {
		d := &env{c: c, tr: tr, s: StartDerper(c, ServerOpts{TLS: tr.tls})}
		detail += fmt.Sprintf("; derper: %s", wsMaxPacketDerper(d))
	}
	c.Passf("%s", detail)
}

// dialPlain connects t over plain DERP (not WebSocket) in a WebSocket check.
func (t *tclient) dialPlain() {
	os.Unsetenv("TS_DEBUG_DERP_WS_CLIENT")
	defer os.Setenv("TS_DEBUG_DERP_WS_CLIENT", "true")
	ws := t.e.tr.ws
	t.e.tr.ws = false
	defer func() { t.e.tr.ws = ws }()
	t.dial()
}

func wsMaxPacket(e *env) string {
	c := e.c
	p, w := e.newClient("P"), e.newClient("W")
	p.dialPlain()
	w.dial()
	big := packetSeq(7, 1, []int{derp.MaxPacketSize})[0]
	c.Check(p.cl.Send(w.pub, big), "P sends 64 KiB")
	m, _ := w.await(5*time.Second, "the 64 KiB packet", isPacket)
	if rp := m.m.(derp.ReceivedPacket); rp.Source != p.pub || string(rp.Data) != string(big) {
		c.Fatalf("W got %d bytes from %s, want the %d P sent", len(rp.Data), rp.Source.ShortString(), len(big))
	}
	// The client sees the close frame or, when its own failed Send closed the socket
	// first, only the end: derpd's log says why it hung up.
	w.cl.Send(p.pub, big)
	m, _ = w.await(5*time.Second, "the connection closed", isErr)
	c.Eventually(5*time.Second, "derpd's log of the close", func() error {
		if !strings.Contains(e.s.Log(), "WebSocket: message too big") {
			return fmt.Errorf("no \"WebSocket: message too big\" in derpd's log (client: %v)", m.err)
		}
		return nil
	})
	return fmt.Sprintf("a %d-byte packet reached the WebSocket client intact; one it sent closed it (1009, derpd: message too big)", len(big))
}

func wsMaxPacketDerper(e *env) string {
	c := e.c
	p, w := e.newClient("P'"), e.newClient("W'")
	p.dialPlain()
	w.dial()
	big := packetSeq(7, 1, []int{derp.MaxPacketSize})[0]
	c.Check(p.cl.Send(w.pub, big), "P' sends 64 KiB")
	m, _ := w.await(5*time.Second, "the 64 KiB packet or the close", func(m rmsg) bool { return isPacket(m) || isErr(m) })
	recv := "received intact"
	if m.err != nil {
		recv = "not received: " + lastPart(m.err)
	}
	w2 := e.newClient("W2'")
	w2.dial()
	w2.cl.Send(p.pub, big)
	m, _ = w2.await(5*time.Second, "the connection closed", isErr)
	return fmt.Sprintf("a %d-byte packet to the WebSocket client %s; one it sent closed it (%s)", len(big), recv, lastPart(m.err))
}
