"""Unit tests of the parsers in check_manifests.py. The fixtures in testdata/ test the checks."""

import unittest

from check_manifests import EFS_HANDLE, is_loopback, option_values, parse_duration, parse_quantity


class ParseQuantityTest(unittest.TestCase):
    def test_valid_quantities(self):
        cases = {
            "1": 1,
            "250m": 0.25,
            "1.5": 1.5,
            ".5": 0.5,
            "512Mi": 512 * 2**20,
            "2Gi": 2 * 2**30,
            "8Ti": 8 * 2**40,
            "1k": 1000,
            "1M": 1e6,
            "1E": 1e18,
            "1e3": 1000,
            "5E-1": 0.5,
            2: 2,
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertAlmostEqual(parse_quantity(text), expected)

    def test_malformed_quantities(self):
        for text in ["512MB", "1.2.3", "Gi", "", "1 Gi", "1e", "1mi", "1KB", "ten"]:
            with self.subTest(text=text):
                self.assertIsNone(parse_quantity(text))


class ParseDurationTest(unittest.TestCase):
    def test_valid_durations(self):
        cases = {"60s": 60, "1m": 60, "1m30s": 90, "500ms": 0.5, "2h": 7200, "1h 5m": 3900}
        for text, expected in cases.items():
            with self.subTest(text=text):
                self.assertAlmostEqual(parse_duration(text), expected)

    def test_malformed_durations(self):
        for text in ["60", "s", "1x", "1m30", "-5s", ""]:
            with self.subTest(text=text):
                self.assertIsNone(parse_duration(text))


class EfsHandleTest(unittest.TestCase):
    def test_valid_handles(self):
        for handle in [
            "fs-0123abcd",
            "fs-0123456789abcdef0",
            "fs-0123456789abcdef0::fsap-0123456789abcdef0",
            "fs-0123456789abcdef0:/data",
            "fs-0123456789abcdef0:/data:fsap-0123abcd",
        ]:
            with self.subTest(handle=handle):
                self.assertIsNotNone(EFS_HANDLE.match(handle))

    def test_malformed_handles(self):
        for handle in [
            "fs-0123456789abcdef",
            "fs-0123456789ABCDEF0",
            "0123456789abcdef0",
            "fs-0123456789abcdef0::fsap-123",
            "fs-0123456789abcdef0:data",
        ]:
            with self.subTest(handle=handle):
                self.assertIsNone(EFS_HANDLE.match(handle))


class OptionValuesTest(unittest.TestCase):
    def test_both_option_forms_and_flags(self):
        options, positional = option_values(
            [
                "--local=/a",
                "--remote",
                "/b",
                "--allow-other",
                "--no-passthrough",
                "--metrics-addr",
                "0.0.0.0:9464",
                "/mnt",
            ]
        )
        self.assertEqual(options["--local"], "/a")
        self.assertEqual(options["--remote"], "/b")
        self.assertEqual(options["--allow-other"], "")
        self.assertEqual(options["--no-passthrough"], "")
        self.assertEqual(options["--metrics-addr"], "0.0.0.0:9464")
        self.assertEqual(positional, ["/mnt"])


class LoopbackTest(unittest.TestCase):
    def test_loopback_addresses(self):
        for address in ["127.0.0.1:9464", "127.1.2.3:9464", "localhost:9464", "[::1]:9464"]:
            with self.subTest(address=address):
                self.assertTrue(is_loopback(address))

    def test_reachable_addresses(self):
        for address in ["0.0.0.0:9464", "[::]:9464", "10.1.11.5:9464"]:
            with self.subTest(address=address):
                self.assertFalse(is_loopback(address))


if __name__ == "__main__":
    unittest.main()
