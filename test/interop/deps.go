package main

// The upstream packages the checks use, imported here too so that go.mod and go.sum
// stay complete while checks are added or removed.
import (
	_ "tailscale.com/derp"
	_ "tailscale.com/derp/derphttp"
	_ "tailscale.com/net/netcheck"
	_ "tailscale.com/prober"
	_ "tailscale.com/tsnet"
	_ "tailscale.com/tstest/integration/testcontrol"
)
