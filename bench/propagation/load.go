package main

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// loadWorkers bounds the requests in flight. A request on loopback takes
// about a millisecond, so at 1000 req/s a few are busy at a time; the rest
// absorb stalls without delaying the schedule.
const loadWorkers = 32

// loadTick is how often the scheduler hands out the requests due by then.
const loadTick = 5 * time.Millisecond

// record is one request of the background load.
type record struct {
	node       int       // index of the node whose proxy was asked
	sent, recv time.Time // request sent, answer read
	pool       string    // X-Cbproxy-Pool of a 200 answer
	fail       string    // "" for a 200 answer, else the status or transport error
}

// load sends GETs at a fixed rate, round robin over the nodes' proxies, over
// keep-alive connections. It is open loop: a request that falls due while
// every worker is busy is counted as not sent rather than delaying the rest.
type load struct {
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup
	tr    *http.Transport

	mu      sync.Mutex
	records []record
	unsent  int
}

// loadResult is what a load run observed.
type loadResult struct {
	records  []record
	unsent   int
	duration time.Duration
}

func startLoad(urls []string, rate int) *load {
	l := &load{
		start: time.Now(),
		quit:  make(chan struct{}),
		tr:    &http.Transport{MaxIdleConnsPerHost: loadWorkers},
	}
	client := &http.Client{Transport: l.tr, Timeout: 5 * time.Second}
	jobs := make(chan int, loadWorkers)
	for range loadWorkers {
		l.wg.Go(func() {
			for n := range jobs {
				l.add(get(client, urls[n], n))
			}
		})
	}
	l.wg.Go(func() {
		defer close(jobs)
		tick := time.NewTicker(loadTick)
		defer tick.Stop()
		sent := 0
		for {
			select {
			case <-l.quit:
				return
			case now := <-tick.C:
				due := int(now.Sub(l.start).Seconds() * float64(rate))
				for ; sent < due; sent++ {
					select {
					case jobs <- sent % len(urls):
					default:
						l.mu.Lock()
						l.unsent++
						l.mu.Unlock()
					}
				}
			}
		}
	})
	return l
}

func (l *load) add(r record) {
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
}

// stop ends the load and waits for the requests in flight.
func (l *load) stop() loadResult {
	close(l.quit)
	l.wg.Wait()
	l.tr.CloseIdleConnections()
	return loadResult{records: l.records, unsent: l.unsent, duration: time.Since(l.start)}
}

func get(client *http.Client, url string, node int) record {
	r := record{node: node, sent: time.Now()}
	resp, err := client.Get(url)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	r.recv = time.Now()
	switch {
	case err != nil:
		r.fail = err.Error()
	case resp.StatusCode != http.StatusOK:
		r.fail = fmt.Sprintf("status %d", resp.StatusCode)
	default:
		r.pool = resp.Header.Get("X-Cbproxy-Pool")
	}
	return r
}
