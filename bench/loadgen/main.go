// Command loadgen posts JSON bodies over HTTP from a fixed number of connections, each
// waiting for its answer before sending the next, and prints one JSON object of figures.
// bench/ingest.py builds and runs it; a Python client would take most of a core from the
// services it measures on a 2-core machine.
//
//	loadgen -url http://127.0.0.1:8080/v1/events -c 32 -n 20000 \
//	    -header 'Authorization: Bearer nk_...' -body '{"idempotency_key":"k-{n}",...}'
//
// In the body, {n} becomes the request's number (0..n-1) and {c} that number modulo
// -contacts, so each request is its own event and the events spread over the contacts.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "where to POST")
	conns := flag.Int("c", 32, "connections, each with one request in flight")
	total := flag.Int("n", 10000, "requests in all")
	body := flag.String("body", "", "body template with {n} and {c}")
	contacts := flag.Int("contacts", 1, "{c} is {n} modulo this")
	header := flag.String("header", "", "one 'Name: value' header")
	flag.Parse()
	name, value, _ := strings.Cut(*header, ":")
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns},
		Timeout:   60 * time.Second,
	}
	var next int64 = -1
	latencies := make([][]float64, *conns)
	statuses := make([]map[int]int, *conns)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *conns; w++ {
		statuses[w] = map[int]int{}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				n := int(atomic.AddInt64(&next, 1))
				if n >= *total {
					return
				}
				text := strings.ReplaceAll(*body, "{n}", strconv.Itoa(n))
				text = strings.ReplaceAll(text, "{c}", strconv.Itoa(n%*contacts))
				req, _ := http.NewRequest("POST", *url, bytes.NewBufferString(text))
				req.Header.Set("Content-Type", "application/json")
				if name != "" {
					req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
				}
				sent := time.Now()
				answer, err := client.Do(req)
				if err != nil {
					statuses[w][0]++
					continue
				}
				io.Copy(io.Discard, answer.Body)
				answer.Body.Close()
				latencies[w] = append(latencies[w], float64(time.Since(sent).Microseconds())/1000)
				statuses[w][answer.StatusCode]++
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []float64
	counts := map[string]int{}
	for w := 0; w < *conns; w++ {
		all = append(all, latencies[w]...)
		for code, count := range statuses[w] {
			counts[strconv.Itoa(code)] += count
		}
	}
	sort.Float64s(all)
	pct := func(q float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return all[int(q/100*float64(len(all)-1)+0.5)]
	}
	out, _ := json.Marshal(map[string]any{
		"requests":    *total,
		"seconds":     elapsed,
		"per_s":       float64(*total) / elapsed,
		"p50_ms":      pct(50),
		"p99_ms":      pct(99),
		"max_ms":      pct(100),
		"status":      counts,
		"connections": *conns,
	})
	fmt.Println(string(out))
	if counts["0"] > 0 {
		os.Exit(1)
	}
}
