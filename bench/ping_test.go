package bench

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tabby-net/tabby/internal/checksum"
	"github.com/tabby-net/tabby/internal/namedns"
)

// pinger sends ICMP echo requests at an exact rate from inside a namespace and counts the
// replies. iputils ping cannot keep 100/s here (its interval rounds up to the kernel's
// timer tick: about 63/s), so the restart benchmark sends its own.
type pinger struct {
	fd   int
	dst  [4]byte
	id   uint16
	stop chan struct{}
	done sync.WaitGroup

	mu       sync.Mutex
	sent     int
	replied  map[uint16]time.Time // by sequence number
	lastSeen time.Time
	maxGap   time.Duration // the longest time without a reply, once replies started
}

// startPinger opens a raw ICMP socket in ns and sends an echo request to dst every
// interval until stopPinger.
func startPinger(ns string, dst netip.Addr, interval time.Duration) (*pinger, error) {
	p := &pinger{dst: dst.As4(), stop: make(chan struct{}), replied: map[uint16]time.Time{}}
	var id [2]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	p.id = binary.BigEndian.Uint16(id[:])
	err := namedns.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		p.fd = fd
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ICMP socket in %s: %w", ns, err)
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(p.fd)
		return nil, err
	}
	p.done.Add(2)
	go p.receive()
	go p.send(interval)
	return p, nil
}

func (p *pinger) send(interval time.Duration) {
	defer p.done.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	to := &unix.SockaddrInet4{Addr: p.dst}
	for seq := uint16(0); ; seq++ {
		msg := make([]byte, 16)
		msg[0] = 8 // echo request
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		binary.BigEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint16(msg[2:], checksum.Internet(msg))
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
		_ = unix.Sendto(p.fd, msg, 0, to) // a failed send is a lost packet
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *pinger) receive() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil || n < 20 {
			continue // timeout: look at stop again
		}
		ihl := int(buf[0]&0x0f) * 4
		if n < ihl+8 || buf[ihl] != 0 || binary.BigEndian.Uint16(buf[ihl+4:]) != p.id {
			continue // not an echo reply of ours
		}
		seq := binary.BigEndian.Uint16(buf[ihl+6:])
		now := time.Now()
		p.mu.Lock()
		if _, dup := p.replied[seq]; !dup {
			p.replied[seq] = now
			if !p.lastSeen.IsZero() {
				p.maxGap = max(p.maxGap, now.Sub(p.lastSeen))
			}
			p.lastSeen = now
		}
		p.mu.Unlock()
	}
}

// stopPinger stops sending, waits a second for the last replies and returns how many
// requests were sent and lost, and the longest time without a reply.
func (p *pinger) stopPinger() (sent, lost int, maxGap time.Duration) {
	time.Sleep(time.Second)
	close(p.stop)
	p.done.Wait()
	unix.Close(p.fd)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.sent - len(p.replied), p.maxGap
}
