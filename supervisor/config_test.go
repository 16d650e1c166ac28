package supervisor

import (
	"strings"
	"testing"
)

func TestConfigValidateChecksTheFleet(t *testing.T) {
	sc := DefaultConfig()
	sc.Fleet.LostAfter = 1
	if err := sc.Validate(); err == nil || !strings.Contains(err.Error(), "Fleet.LostAfter") {
		t.Errorf("Config.Validate does not check the fleet: %v", err)
	}
}
