package datapath

import (
	"strings"
	"testing"
)

// Every reason of the C enum has its words in reasonText, and nothing else.
func TestEveryReasonIsExplained(t *testing.T) {
	names, err := loadCounterNames()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range names.reasons {
		seen[r] = true
		if reasonText[r] == "" {
			t.Errorf("reason %s has no text in reasonText", r)
		}
	}
	for r := range reasonText {
		if !seen[r] {
			t.Errorf("reasonText explains %s, which the enum hgw_reason does not have", r)
		}
	}
	help, err := ReasonHelp()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(help, "\n"); got != len(names.reasons) {
		t.Errorf("ReasonHelp has %d lines for %d reasons:\n%s", got, len(names.reasons), help)
	}
}
