package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tabby-net/tabby/internal/namedns"
)

// OutsideView is what the outside host saw of one pod's ping: the source address the echo
// request arrived with (the pod's own address, or its host's when NAT outgoing masqueraded
// it), and whether the pod got its reply.
type OutsideView struct {
	Pod    string
	Source netip.Addr // invalid when no request arrived
	Reply  bool
}

// ObserveOutside pings the outside host from every pod at once and reports, for each, the
// source address the request had when it arrived there. The outside host knows only the
// hosts' network, so a reply comes back only when the source was masqueraded to a host's
// address. The observer is a raw ICMP socket made inside the outside host's namespace:
// Linux hands every incoming ICMP packet to raw sockets, whether or not a reply can be
// routed. Each pod's pings carry their own payload pattern, so the pods are told apart.
func (c *Cluster) ObserveOutside(ctx context.Context) ([]OutsideView, error) {
	var pc net.PacketConn
	if err := namedns.Do(c.Topo.OutsideNS(), func() error {
		var err error
		pc, err = net.ListenPacket("ip4:icmp", c.Topo.Outside.Addr.Addr().String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("ICMP observer on the outside host: %w", err)
	}
	defer pc.Close()

	patterns := make(map[string][]byte, len(c.Workloads))
	for i, w := range c.Workloads {
		patterns[w.Name] = []byte(fmt.Sprintf("tabbypod%02d", i))
	}
	var (
		mu   sync.Mutex
		seen = map[string]netip.Addr{}
	)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed, or the read deadline passed
			}
			// An ICMP echo request (type 8) with one of the pods' patterns in its payload.
			if n < 8 || buf[0] != 8 {
				continue
			}
			src, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP.To4())
			if !ok {
				continue
			}
			for pod, pat := range patterns {
				if bytes.Contains(buf[8:n], pat) {
					mu.Lock()
					if _, dup := seen[pod]; !dup {
						seen[pod] = src
					}
					mu.Unlock()
				}
			}
		}
	}()

	out := make([]OutsideView, len(c.Workloads))
	var wg sync.WaitGroup
	dst := c.Topo.Outside.Addr.Addr().String()
	for i, w := range c.Workloads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := namedns.Command(c.PodNS(w.Name), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-w", "3",
				"-p", hex.EncodeToString(patterns[w.Name]), dst)
			out[i] = OutsideView{Pod: w.Name, Reply: runCtx(ctx, cmd) == nil}
		}()
	}
	wg.Wait()
	// Requests that are on their way have arrived by now; stop the reader.
	_ = pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	for i := range out {
		out[i].Source = seen[out[i].Pod]
	}
	return out, ctx.Err()
}
