# tests/integration/dkim_samples.bash - sample messages for the DKIM
# verifier tests (dkim_dkimpy.sh, dkim_opendkim.sh); sourced.
#
#   dkim_samples DIR   writes DIR/{plain,folded,trailing,empty,big}.eml
#
# Written with LF line ends (mxdkim turns LF into CRLF).  folded.eml holds
# folded headers and a duplicate Subject; trailing.eml trailing whitespace
# and empty lines at the end; big.eml a body over 100 KiB.
dkim_samples() {
	local d=$1
	cat >"$d/plain.eml" <<'M'
From: Sensor 17 <sensor17@fleet.example>
To: ops@example.net
Subject: Temperature alarm
Date: Mon, 23 Nov 2026 10:00:00 +0000
Message-ID: <t17.1@fleet.example>

Sensor 4 reads 81.5 C.
M
	cat >"$d/folded.eml" <<'M'
Received: from cam-3 by relay
From: "Camera 3"
	<cam3@fleet.example>
To: a@example.net,
    b@example.net,
	c@example.net
Subject: Motion
  detected    at gate
Date: Mon, 23 Nov 2026 10:00:00 +0000
Subject: second subject (duplicate)

Frame 1022.
M
	printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: ws   \n\ntrailing spaces   \ntabs\t\t\n  \n\n\n' >"$d/trailing.eml"
	printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: empty\n\n' >"$d/empty.eml"
	{
		printf 'From: dev@fleet.example\nTo: x@example.net\nSubject: big\n\n'
		for i in $(seq 1 1700); do printf 'line %05d of a 100 KiB body, padded to sixty-four bytes..\n' "$i"; done
	} >"$d/big.eml"
}
