package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// faultRow is one line the e2e fault suite appends to $TP_FAULTS_OUT
// (test/e2e/faults_test.go's faultResult).
type faultRow struct {
	Fault           string   `json:"fault"`
	Recovered       bool     `json:"recovered"`
	RecoverySeconds int64    `json:"recoverySeconds"`
	FaultSeconds    float64  `json:"faultSeconds"`
	FailedInbound   int64    `json:"failedInbound"`
	FailedOutbound  int64    `json:"failedOutbound"`
	OKInbound       int64    `json:"okInbound"`
	OKOutbound      int64    `json:"okOutbound"`
	Problems        []string `json:"problems"`
}

// faultTable prints the fault suite's results (one JSON object per line in
// path) as a Markdown table: the recovery table of test/bench/README.md.
func faultTable(path string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("fault results: %w (run `make bench-faults`)", err)
	}
	defer f.Close()
	var rows []faultRow
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r faultRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("fault results %s: %q: %w", path, line, err)
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(rows) == 0 {
		return fmt.Errorf("fault results %s: no fault ran", path)
	}
	fmt.Fprintln(w, "| fault | fault lasted | recovered after | failed inbound (cluster pod -> intercept) | failed outbound (joined container -> service) | intercept kept |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		recovery := fmt.Sprintf("%d s", r.RecoverySeconds)
		if !r.Recovered {
			recovery = "not within the deadline"
		}
		kept := "yes"
		for _, p := range r.Problems {
			if !strings.HasPrefix(p, "loads not steady") {
				kept = "no: " + p
				break
			}
		}
		fmt.Fprintf(w, "| %s | %.1f s | %s | %d of %d | %d of %d | %s |\n", r.Fault, r.FaultSeconds, recovery,
			r.FailedInbound, r.FailedInbound+r.OKInbound, r.FailedOutbound, r.FailedOutbound+r.OKOutbound,
			strings.ReplaceAll(kept, "|", "\\|"))
	}
	return nil
}
