package main

import (
	"context"
	"time"

	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
	"tailscale.com/net/netmon"
)

func init() {
	register("smoke/login", func(c *C) {
		s := StartDerpd(c, ServerOpts{TLS: true})
		priv := key.NewNode()
		cl, err := derphttp.NewClient(priv, s.URL(), logger.Discard, netmon.NewStatic())
		c.Check(err, "NewClient")
		defer cl.Close()
		ctx, cancel := context.WithTimeout(c.Ctx, 5*time.Second)
		defer cancel()
		c.Check(cl.Connect(ctx), "connect")
		m, err := cl.Recv()
		c.Check(err, "recv")
		si, ok := m.(derp.ServerInfoMessage)
		if !ok {
			c.Fatalf("first message %T", m)
		}
		c.Passf("logged in over TLS to %s, server key %s, server info %+v", s.URL(), cl.ServerPublicKey().ShortString(), si)
	})
}
