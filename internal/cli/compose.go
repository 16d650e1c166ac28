package cli

import (
	"fmt"
	"os"
	"slices"

	"gopkg.in/yaml.v3"
)

// ComposeFile is the part of docker-compose.yml the tests check.
type ComposeFile struct {
	Services map[string]ComposeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// ComposeService is one service of a compose file.
type ComposeService struct {
	Image     string    `yaml:"image"`
	Build     any       `yaml:"build"`
	Command   []string  `yaml:"command"`
	Ports     []string  `yaml:"ports"`
	Volumes   []string  `yaml:"volumes"`
	DependsOn DependsOn `yaml:"depends_on"`
}

// DependsOn is a service's depends_on in either compose form: a list of
// service names, or a map of service name to its condition.
type DependsOn []string

// UnmarshalYAML accepts both forms.
func (d *DependsOn) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		*d = names
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := n.Decode(&m); err != nil {
			return err
		}
		names := make([]string, 0, len(m))
		for k := range m {
			names = append(names, k)
		}
		slices.Sort(names)
		*d = names
	default:
		return fmt.Errorf("depends_on at line %d: want a list or a map of services", n.Line)
	}
	return nil
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
