package cli

import (
	"fmt"
	"os"

	"gopkg.in/yaml.v3"
)

// ComposeFile is the part of docker-compose.yml the tests check.
type ComposeFile struct {
	Services map[string]ComposeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// ComposeService is one service of a compose file.
type ComposeService struct {
	Image     string   `yaml:"image"`
	Build     any      `yaml:"build"`
	Command   []string `yaml:"command"`
	Ports     []string `yaml:"ports"`
	Volumes   []string `yaml:"volumes"`
	DependsOn []string `yaml:"depends_on"`
}

// ReadCompose parses a compose file strictly enough to catch typos in the
// keys the tests rely on.
func ReadCompose(path string) (ComposeFile, error) {
	var c ComposeFile
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("cli: %s: %w", path, err)
	}
	return c, nil
}

// CommandsOf returns the arguments (after the binary) of every service
// whose command runs /usr/local/bin/<binary>, keyed by service name.
func (c ComposeFile) CommandsOf(binary string) map[string][]string {
	out := map[string][]string{}
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "/usr/local/bin/"+binary {
			out[name] = s.Command[1:]
		}
	}
	return out
}
