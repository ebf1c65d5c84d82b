/*
 * Drink Machine kiosk page.
 *
 * The page holds no business state: it draws whatever screen the last server frame names
 * (shared/DESIGN.md, "Websocket protocol") and sends the customer's taps back as SHOW_MENU,
 * ORDER and CANCEL. Every text from the server is put on the page with textContent, never
 * parsed as HTML.
 *
 * Hooks for tests: document.body.dataset.screen (the current frame's event),
 * data-testid attributes, and window.kiosk = {state, lastFrame, frame, connected, lang}.
 */
(function () {
  "use strict";

  var FILE_WS_URL = "ws://localhost:3333/ws";
  var RECONNECT_BASE_MS = 250;
  var RECONNECT_MAX_MS = 5000;
  var CONNECT_TIMEOUT_MS = 8000;
  var TOAST_MS = 4000;
  var URGENT_S = 30;
  var LANG_KEY = "drinkMachine.lang";
  var LANGS = ["id", "en"];

  var SCREENS = [
    "IDLE", "SHOW_MENU", "MENU_CLICKED", "ORDER_CREATED", "PAYMENT_SUCCESS", "DISPENSING",
    "DISPENSED", "PAYMENT_FAILED", "DISPENSE_FAILED", "OUT_OF_SERVICE",
  ];
  var RESULT_SCREENS = ["DISPENSED", "PAYMENT_FAILED", "DISPENSE_FAILED"];
  var FAIL_REASONS = [
    "cancelled", "timeout", "denied", "expired", "gateway_unreachable", "gateway_refused",
    "amount_mismatch",
  ];
  var REFUND_OUTCOMES = ["refunded", "owed", "vend_unknown"];
  var ERROR_CODES = [
    "malformed_frame", "unknown_event", "bad_values", "unknown_drink", "sold_out", "wrong_state",
    "rate_limited", "unavailable",
  ];
  // Shown on the attract screen, before any menu has arrived.
  var ATTRACT_ICONS = [
    "assets/cola.svg", "assets/lemon.svg", "assets/tea.svg", "assets/coffee.svg",
    "assets/water.svg", "assets/orange.svg",
  ];
  var LIQUID_COLOURS = {
    cola: "#5a2617", lemon: "#ffd43b", tea: "#c2581c", coffee: "#6f3b1e", water: "#74c0fc",
    orange: "#fd7e14",
  };

  var STRINGS = {
    id: {
      "lang.name": "Bahasa Indonesia",
      "lang.switch": "Ganti bahasa ke English",
      "conn.connecting": "Menghubungkan…",
      "conn.reconnecting": "Menyambung ulang…",
      "conn.connected": "Terhubung",
      "connecting.title": "Menghubungkan ke mesin…",
      "connecting.sub": "Mohon tunggu sebentar.",
      "idle.title": "Minuman segar, bayar pakai QRIS",
      "idle.cta": "Sentuh untuk mulai",
      "idle.sub": "Scan dengan GoPay, OVO, DANA, ShopeePay atau mobile banking",
      "menu.title": "Pilih minuman",
      "menu.sub": "Sentuh minuman untuk memesan",
      "menu.soldOut": "Habis",
      "menu.left": "Sisa {n}",
      "menu.back": "Kembali",
      "menu.empty": "Menu belum tersedia.",
      "menu.drinkLabel": "{name}, {price}",
      "menu.soldOutLabel": "{name}, habis",
      "clicked.title": "Menyiapkan pembayaran…",
      "clicked.sub": "Mohon tunggu, kode QR segera muncul.",
      "pay.title": "Scan untuk membayar",
      "pay.hint.qris": "Buka aplikasi e-wallet atau mobile banking, lalu scan kode QRIS ini.",
      "pay.hint.gopay": "Buka aplikasi Gojek atau GoPay, lalu scan kode QR ini.",
      "pay.total": "Total bayar",
      "pay.timeLeft": "Sisa waktu",
      "pay.checking": "Memeriksa pembayaran…",
      "pay.qrAlt": "Kode QR pembayaran sebesar {amount}",
      "pay.qrMissing": "Kode QR tidak tersedia. Silakan batalkan dan coba lagi.",
      "pay.announce": "Scan kode QR untuk membayar {amount}",
      cancel: "Batal",
      cancelling: "Membatalkan…",
      "success.title": "Pembayaran berhasil!",
      "success.sub": "Terima kasih! Minuman Anda segera disiapkan.",
      "dispensing.title": "Minuman Anda sedang disiapkan…",
      "dispensing.sub": "Mohon tunggu sebentar.",
      "dispensed.title": "Selamat menikmati!",
      "dispensed.sub": "Silakan ambil minuman Anda di bawah.",
      tapToFinish: "Sentuh layar untuk selesai",
      done: "Selesai",
      orderId: "No. pesanan",
      "fail.cancelled": "Pesanan dibatalkan",
      "fail.cancelled.detail": "Tidak ada biaya yang dikenakan.",
      "fail.timeout": "Waktu pembayaran habis",
      "fail.timeout.detail":
        "Pembayaran tidak kami terima tepat waktu, jadi pesanan dibatalkan. Tidak ada biaya yang dikenakan.",
      "fail.denied": "Pembayaran ditolak",
      "fail.denied.detail":
        "Penyedia pembayaran Anda menolak transaksi ini. Tidak ada biaya yang dikenakan. Silakan coba lagi atau gunakan aplikasi lain.",
      "fail.expired": "Kode QR kedaluwarsa",
      "fail.expired.detail":
        "Kode QR ini sudah tidak berlaku. Tidak ada biaya yang dikenakan. Silakan pesan lagi.",
      "fail.gateway_unreachable": "Layanan pembayaran tidak dapat dihubungi",
      "fail.gateway_unreachable.detail":
        "Kami tidak dapat terhubung ke layanan pembayaran. Tidak ada biaya yang dikenakan. Silakan coba lagi sebentar lagi.",
      "fail.gateway_refused": "Pembayaran tidak dapat dibuat",
      "fail.gateway_refused.detail":
        "Layanan pembayaran tidak dapat membuat transaksi ini. Tidak ada biaya yang dikenakan. Silakan coba lagi.",
      "fail.amount_mismatch": "Jumlah pembayaran tidak sesuai",
      "fail.amount_mismatch.detail":
        "Jumlah yang diterima tidak sama dengan harga, jadi minuman tidak dikeluarkan. Jika saldo Anda terpotong, petugas kami akan membantu: tunjukkan nomor pesanan di bawah ini.",
      "fail.unknown": "Pembayaran tidak berhasil",
      "fail.unknown.detail":
        "Tidak ada minuman yang dikeluarkan. Silakan coba lagi atau hubungi petugas.",
      "dispenseFailed.title": "Maaf, minuman tidak dapat dikeluarkan",
      "refund.refunded": "Uang Anda sebesar {amount} sudah dikembalikan ke e-wallet Anda.",
      "refund.refunded.noAmount": "Uang Anda sudah dikembalikan ke e-wallet Anda.",
      "refund.refunded.note": "Mungkin perlu beberapa saat sampai saldo kembali muncul.",
      "refund.owed":
        "Petugas kami akan mengembalikan uang Anda. Tunjukkan nomor pesanan di bawah ini kepada petugas.",
      "refund.vend_unknown":
        "Kami belum dapat memastikan apakah minuman sudah keluar. Petugas kami akan membantu: tunjukkan nomor pesanan di bawah ini.",
      "oos.title": "Sedang dalam perawatan",
      "oos.sub": "Mohon maaf, mesin ini belum dapat digunakan. Silakan kembali lagi nanti.",
      "error.unknown_drink": "Minuman itu tidak tersedia.",
      "error.sold_out": "Maaf, minuman itu sudah habis.",
      "error.wrong_state": "Layar sedang diperbarui. Silakan coba lagi.",
      "error.rate_limited": "Terlalu cepat. Tunggu sebentar, lalu coba lagi.",
      "error.unavailable": "Layanan sedang sibuk. Silakan coba lagi sebentar lagi.",
      "error.malformed_frame": "Terjadi kesalahan. Silakan coba lagi.",
      "error.unknown_event": "Terjadi kesalahan. Silakan coba lagi.",
      "error.bad_values": "Terjadi kesalahan. Silakan coba lagi.",
      "error.generic": "Terjadi kesalahan. Silakan coba lagi.",
      "toast.offline": "Sedang menyambung ulang ke mesin. Silakan coba lagi sebentar lagi.",
    },
    en: {
      "lang.name": "English",
      "lang.switch": "Switch language to Bahasa Indonesia",
      "conn.connecting": "Connecting…",
      "conn.reconnecting": "Reconnecting…",
      "conn.connected": "Connected",
      "connecting.title": "Connecting to the machine…",
      "connecting.sub": "One moment, please.",
      "idle.title": "Fresh drinks, pay with QRIS",
      "idle.cta": "Tap to start",
      "idle.sub": "Scan with GoPay, OVO, DANA, ShopeePay or your banking app",
      "menu.title": "Choose your drink",
      "menu.sub": "Tap a drink to order",
      "menu.soldOut": "Sold out",
      "menu.left": "{n} left",
      "menu.back": "Back",
      "menu.empty": "The menu is not available yet.",
      "menu.drinkLabel": "{name}, {price}",
      "menu.soldOutLabel": "{name}, sold out",
      "clicked.title": "Preparing your payment…",
      "clicked.sub": "One moment, your QR code is on its way.",
      "pay.title": "Scan to pay",
      "pay.hint.qris": "Open your e-wallet or banking app and scan this QRIS code.",
      "pay.hint.gopay": "Open the Gojek or GoPay app and scan this QR code.",
      "pay.total": "Total",
      "pay.timeLeft": "Time left",
      "pay.checking": "Checking payment…",
      "pay.qrAlt": "Payment QR code for {amount}",
      "pay.qrMissing": "The QR code is not available. Please cancel and try again.",
      "pay.announce": "Scan the QR code to pay {amount}",
      cancel: "Cancel",
      cancelling: "Cancelling…",
      "success.title": "Payment received!",
      "success.sub": "Thank you! Your drink is being prepared.",
      "dispensing.title": "Pouring your drink…",
      "dispensing.sub": "Just a moment, please.",
      "dispensed.title": "Enjoy your drink!",
      "dispensed.sub": "Please take your drink from the tray below.",
      tapToFinish: "Tap the screen to finish",
      done: "Done",
      orderId: "Order no.",
      "fail.cancelled": "Order cancelled",
      "fail.cancelled.detail": "You have not been charged.",
      "fail.timeout": "Payment time is up",
      "fail.timeout.detail":
        "We did not receive your payment in time, so the order was cancelled. You have not been charged.",
      "fail.denied": "Payment declined",
      "fail.denied.detail":
        "Your payment provider declined this payment. You have not been charged. Please try again or use another app.",
      "fail.expired": "QR code expired",
      "fail.expired.detail":
        "This QR code is no longer valid. You have not been charged. Please order again.",
      "fail.gateway_unreachable": "Payment service unreachable",
      "fail.gateway_unreachable.detail":
        "We could not reach the payment service. You have not been charged. Please try again in a little while.",
      "fail.gateway_refused": "Payment could not be created",
      "fail.gateway_refused.detail":
        "The payment service could not create this payment. You have not been charged. Please try again.",
      "fail.amount_mismatch": "Payment amount did not match",
      "fail.amount_mismatch.detail":
        "The amount received does not match the price, so no drink was dispensed. If you were charged, our staff will help: please show the order number below.",
      "fail.unknown": "Payment unsuccessful",
      "fail.unknown.detail": "No drink was dispensed. Please try again or ask a staff member.",
      "dispenseFailed.title": "Sorry, your drink could not be dispensed",
      "refund.refunded": "Your {amount} has been returned to your e-wallet.",
      "refund.refunded.noAmount": "Your money has been returned to your e-wallet.",
      "refund.refunded.note": "It may take a few moments to show up in your balance.",
      "refund.owed":
        "Our staff will refund your money. Please show the order number below to a staff member.",
      "refund.vend_unknown":
        "We could not confirm whether your drink came out. Our staff will help: please show the order number below.",
      "oos.title": "Temporarily out of service",
      "oos.sub": "Sorry, this machine cannot be used right now. Please come back later.",
      "error.unknown_drink": "That drink is not available.",
      "error.sold_out": "Sorry, that drink is sold out.",
      "error.wrong_state": "The screen is updating. Please try again.",
      "error.rate_limited": "Too fast. Please wait a moment and try again.",
      "error.unavailable": "The service is busy. Please try again shortly.",
      "error.malformed_frame": "Something went wrong. Please try again.",
      "error.unknown_event": "Something went wrong. Please try again.",
      "error.bad_values": "Something went wrong. Please try again.",
      "error.generic": "Something went wrong. Please try again.",
      "toast.offline": "Reconnecting to the machine. Please try again in a moment.",
    },
  };

  // --- Pure helpers (also used by the tests through Node) ----------------------------------

  /** 7000 -> "Rp 7.000" (Indonesian grouping with '.'), in either language. */
  function formatRupiah(value) {
    var n = Number(value);
    if (value === null || value === undefined || value === "" || !isFinite(n)) return "";
    var digits = String(Math.round(Math.abs(n))).replace(/\B(?=(\d{3})+(?!\d))/g, ".");
    return (n < 0 ? "-" : "") + "Rp " + digits;
  }

  /** Seconds left until expiresAt (unix seconds) at nowMs, never negative. */
  function secondsLeft(expiresAt, nowMs) {
    return Math.max(0, Math.ceil(Number(expiresAt) - nowMs / 1000));
  }

  /** 125 -> "02:05" */
  function formatCountdown(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var mm = Math.floor(s / 60);
    var ss = s % 60;
    return (mm < 10 ? "0" : "") + mm + ":" + (ss < 10 ? "0" : "") + ss;
  }

  /** The websocket URL: ?ws= wins, then the page's own host, then localhost:3333 for file://. */
  function resolveWsUrl(loc) {
    var override = null;
    var match = /[?&]ws=([^&#]*)/.exec(loc.search || "");
    if (match) {
      try {
        override = decodeURIComponent(match[1]);
      } catch (e) {
        override = null;
      }
    }
    if (override && /^wss?:\/\/[^\s]+$/i.test(override)) return override;
    if (loc.protocol === "http:" || loc.protocol === "https:") {
      return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
    }
    return FILE_WS_URL;
  }

  /** Delay before reconnect attempt n (0-based): doubles from 250 ms, capped at 5 s. */
  function reconnectDelay(attempt) {
    return Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * Math.pow(2, Math.max(0, attempt)));
  }

  function translate(lang, key, params) {
    var table = STRINGS[lang] || STRINGS.id;
    var text = Object.prototype.hasOwnProperty.call(table, key) ? table[key] : STRINGS.id[key];
    if (text === undefined) text = key;
    if (params) {
      text = text.replace(/\{(\w+)\}/g, function (all, name) {
        return Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : all;
      });
    }
    return text;
  }

  /** Only our own relative asset paths, or http(s)/data images, may become an <img src>. */
  function safeImageUrl(url, allowRemote) {
    if (typeof url !== "string" || url.length === 0 || url.length > 2048) return null;
    if (/^[a-z][a-z0-9+.-]*:/i.test(url) || url.indexOf("//") === 0) {
      return allowRemote && /^https?:\/\//i.test(url) ? url : null;
    }
    return /^[\w./-]+$/.test(url) && url.indexOf("..") === -1 ? url : null;
  }

  /**
   * The payment QR as rows of modules (true = dark), without the quiet zone: `text` in byte
   * mode as UTF-8, error correction level M, in the smallest version that holds it.
   * `qrcode` is the qrcode-generator factory (web/vendor/qrcode-generator/qrcode.js, the
   * global `qrcode` in the page). Throws when the text does not fit in version 40.
   */
  function qrModules(qrcode, text) {
    qrcode.stringToBytes = qrcode.stringToBytesFuncs["UTF-8"];
    var code = qrcode(0, "M");
    code.addData(String(text), "Byte");
    code.make();
    var size = code.getModuleCount();
    var rows = [];
    for (var r = 0; r < size; r++) {
      var row = [];
      for (var c = 0; c < size; c++) row.push(code.isDark(r, c));
      rows.push(row);
    }
    return rows;
  }

  if (typeof document === "undefined") {
    module.exports = {
      STRINGS: STRINGS,
      SCREENS: SCREENS,
      FAIL_REASONS: FAIL_REASONS,
      REFUND_OUTCOMES: REFUND_OUTCOMES,
      ERROR_CODES: ERROR_CODES,
      ATTRACT_ICONS: ATTRACT_ICONS,
      formatRupiah: formatRupiah,
      formatCountdown: formatCountdown,
      secondsLeft: secondsLeft,
      resolveWsUrl: resolveWsUrl,
      reconnectDelay: reconnectDelay,
      translate: translate,
      safeImageUrl: safeImageUrl,
      qrModules: qrModules,
    };
    return;
  }

  // --- Page state ---------------------------------------------------------------------------

  var kiosk = {
    state: null, // the screen on show: the event name of `frame`
    frame: null, // the last state frame (what the screen is drawn from)
    lastFrame: null, // the last frame of any kind received, ERROR included
    lastError: null,
    connected: false,
    lang: "id",
    url: resolveWsUrl(window.location),
  };
  window.kiosk = kiosk;

  // Taps already sent for the frame on screen; a new frame clears them (ERROR too).
  var pending = { start: false, order: null, cancel: false, dismiss: false };
  var socket = null;
  var attempt = 0;
  var reconnectTimer = null;
  var connectTimer = null;
  var tickTimer = null;
  var toastTimer = null;
  var lastAnnounced = null;

  var stage;
  var announcer;
  var toastEl;
  var connectionEl;
  var langButton;

  function t(key, params) {
    return translate(kiosk.lang, key, params);
  }

  // --- DOM building ---------------------------------------------------------------------------

  /** el("div", {class: "x", "data-testid": "y", onclick: fn}, [children or text]) */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) return;
        if (name.indexOf("on") === 0) node.addEventListener(name.slice(2), value);
        else if (name === "text") node.textContent = value;
        else if (value === true) node.setAttribute(name, "");
        else node.setAttribute(name, String(value));
      });
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
  }

  var SVG_NS = "http://www.w3.org/2000/svg";
  var ICON_PATHS = {
    check: ["M5 12.5l4.5 4.5L19 7.5"],
    cross: ["M7 7l10 10", "M17 7L7 17"],
    info: ["M12 11v6", "M12 7.5v.01"],
    clock: ["M12 3.5a8.5 8.5 0 1 0 0 17 8.5 8.5 0 0 0 0-17z", "M12 7.5v4.8l3 1.8"],
    back: ["M14.5 5.5L8 12l6.5 6.5"],
    wrench: [
      "M12.5 11.5L4.5 19.5",
      "M12.5 11.5a4.5 4.5 0 0 1 5.2-6.4l-2.6 2.6.4 1.9 1.9.4 2.6-2.6a4.5 4.5 0 0 1-6.4 5.2z",
    ],
    refund: ["M4 12a8 8 0 1 0 2.3-5.6", "M4 4v4.5h4.5"],
    staff: ["M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8z", "M4.5 20a7.5 7.5 0 0 1 15 0"],
  };

  function icon(name, className) {
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon " + (className || ""));
    (ICON_PATHS[name] || []).forEach(function (d) {
      var path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    });
    return svg;
  }

  function statusBadge(kind, iconName) {
    return el("div", { class: "status-badge status-" + kind }, icon(iconName));
  }

  function drinkImage(drink, className) {
    var name = drinkName(drink);
    var src = drink ? safeImageUrl(drink.icon, false) : null;
    if (!src && drink && typeof drink.id === "string" && /^[\w-]+$/.test(drink.id)) {
      src = "assets/" + drink.id + ".svg";
    }
    var fallback = el("span", { class: className + " drink-fallback", "aria-hidden": "true" }, name.slice(0, 1));
    if (!src) return fallback;
    var img = el("img", { class: className, src: src, alt: name, draggable: "false" });
    img.addEventListener("error", function () {
      if (img.parentNode) img.parentNode.replaceChild(fallback, img);
    });
    return img;
  }

  function drinkName(drink) {
    if (drink && kiosk.lang === "en" && typeof drink.name_en === "string" && drink.name_en) {
      return drink.name_en;
    }
    if (drink && typeof drink.name === "string" && drink.name) return drink.name;
    if (drink && typeof drink.id === "string") return drink.id;
    return "";
  }

  function amountOf(values) {
    if (!values) return null;
    if (isFinite(Number(values.amount)) && values.amount !== null) return Number(values.amount);
    var td = values.transaction_details;
    if (td && td.gross_amount !== null && isFinite(Number(td.gross_amount))) return Number(td.gross_amount);
    if (values.drink && values.drink.price !== null && isFinite(Number(values.drink.price))) {
      return Number(values.drink.price);
    }
    return null;
  }

  function drinkOf(values) {
    if (!values) return null;
    if (values.drink && typeof values.drink === "object") return values.drink;
    var items = values.item_details;
    if (Array.isArray(items) && items[0] && typeof items[0] === "object") return items[0];
    return null;
  }

  /** The drink, its name and the amount, as on the payment and result screens. */
  function orderSummary(values, className, withoutAmount) {
    var drink = drinkOf(values);
    var amount = withoutAmount ? null : amountOf(values);
    if (!drink && amount === null) return null;
    return el("div", { class: "summary " + (className || "") }, [
      drink ? drinkImage(drink, "summary-icon") : null,
      el("div", { class: "summary-text" }, [
        drink ? el("div", { class: "summary-name", text: drinkName(drink) }) : null,
        amount !== null ? el("div", { class: "summary-amount", "data-testid": "amount", text: formatRupiah(amount) }) : null,
      ]),
    ]);
  }

  function orderIdLine(values, prominent) {
    var id = values && typeof values.order_id === "string" ? values.order_id : null;
    if (!id) return null;
    return el("div", { class: "order-id" + (prominent ? " order-id-prominent" : "") }, [
      el("span", { class: "order-id-label", text: t("orderId") }),
      el("span", { class: "order-id-value", "data-testid": "order-id", text: id }),
    ]);
  }

  function cancelButton(disabled) {
    var busy = pending.cancel;
    return el(
      "button",
      {
        type: "button",
        class: "btn btn-secondary btn-cancel",
        "data-testid": "cancel",
        disabled: disabled || busy,
        "aria-busy": busy ? "true" : null,
        onclick: onCancel,
      },
      [icon("cross"), el("span", { text: busy ? t("cancelling") : t("cancel") })],
    );
  }

  function spinner(className) {
    return el("div", { class: "spinner " + (className || ""), "aria-hidden": "true" });
  }

  // --- Screens ------------------------------------------------------------------------------

  function screenConnecting() {
    return el("section", { class: "screen screen-connecting" }, [
      spinner("spinner-large"),
      el("h1", { class: "title", text: t("connecting.title") }),
      el("p", { class: "subtitle", text: t("connecting.sub") }),
    ]);
  }

  function screenIdle() {
    var other = kiosk.lang === "id" ? "en" : "id";
    return el("section", { class: "screen screen-idle" }, [
      el(
        "button",
        {
          type: "button",
          class: "attract",
          "data-testid": "start",
          "aria-label": t("idle.cta"),
          disabled: pending.start,
          onclick: onStart,
        },
        [
          el(
            "div",
            { class: "attract-icons", "aria-hidden": "true" },
            ATTRACT_ICONS.map(function (src, i) {
              return el("img", { class: "attract-icon attract-icon-" + i, src: src, alt: "", draggable: "false" });
            }),
          ),
          el("span", { class: "attract-brand", text: "Drink Machine" }),
          el("span", { class: "attract-title", text: t("idle.title") }),
          el("span", { class: "attract-cta" }, [
            el("span", { class: "attract-cta-main", text: t("idle.cta") }),
            el("span", { class: "attract-cta-other", lang: other, text: translate(other, "idle.cta") }),
          ]),
          el("span", { class: "attract-sub" }, [
            el("span", { class: "qris-mark", text: "QRIS" }),
            el("span", { text: t("idle.sub") }),
          ]),
        ],
      ),
    ]);
  }

  function validDrinks(values) {
    if (values && !Array.isArray(values) && Array.isArray(values.drinks)) values = values.drinks;
    if (!Array.isArray(values)) return [];
    return values.filter(function (d) {
      return d && typeof d === "object" && typeof d.id === "string" && d.id !== "";
    });
  }

  function screenMenu(values) {
    var drinks = validDrinks(values);
    var n = drinks.length;
    var grid = el("div", {
      class: "menu-grid" + (pending.order ? " is-pending" : ""),
      "data-testid": "menu-grid",
      "aria-busy": pending.order ? "true" : null,
    });
    // Columns per orientation; the CSS picks one with a media query.
    grid.style.setProperty("--cols-portrait", String(n <= 1 ? 1 : n <= 6 ? 2 : 3));
    grid.style.setProperty("--cols-landscape", String(n <= 4 ? Math.max(n, 1) : n <= 8 ? Math.ceil(n / 2) : Math.ceil(n / 3)));
    drinks.forEach(function (drink) {
      var stock = drink.stock === undefined || drink.stock === null ? null : Number(drink.stock);
      var soldOut = stock !== null && !(stock > 0);
      var price = formatRupiah(drink.price);
      var chosen = pending.order === drink.id;
      grid.appendChild(
        el(
          "button",
          {
            type: "button",
            class: "drink" + (soldOut ? " sold-out" : "") + (chosen ? " chosen" : ""),
            "data-testid": "drink-" + drink.id,
            "data-drink-id": drink.id,
            "data-sold-out": soldOut ? "true" : "false",
            disabled: soldOut || !!pending.order,
            "aria-label": soldOut
              ? t("menu.soldOutLabel", { name: drinkName(drink) })
              : t("menu.drinkLabel", { name: drinkName(drink), price: price }),
            onclick: function () {
              onOrder(drink.id);
            },
          },
          [
            el("span", { class: "drink-art" }, drinkImage(drink, "drink-icon")),
            el("span", { class: "drink-text" }, [
              el("span", { class: "drink-name", text: drinkName(drink) }),
              el("span", { class: "drink-price", text: price }),
            ]),
            soldOut ? el("span", { class: "badge badge-soldout", text: t("menu.soldOut") }) : null,
            !soldOut && stock !== null && stock <= 3
              ? el("span", { class: "badge badge-low", text: t("menu.left", { n: stock }) })
              : null,
            chosen ? spinner("spinner-small drink-spinner") : null,
          ],
        ),
      );
    });
    return el("section", { class: "screen screen-menu" }, [
      el("div", { class: "screen-head" }, [
        el("h1", { class: "title", text: t("menu.title") }),
        el("p", { class: "subtitle", text: n ? t("menu.sub") : t("menu.empty") }),
      ]),
      grid,
      el("div", { class: "screen-foot" }, [
        el(
          "button",
          {
            type: "button",
            class: "btn btn-secondary",
            "data-testid": "cancel",
            disabled: pending.cancel,
            onclick: onCancel,
          },
          [icon("back"), el("span", { text: t("menu.back") })],
        ),
      ]),
    ]);
  }

  function screenMenuClicked(values) {
    return el("section", { class: "screen screen-progress" }, [
      orderSummary(values, "summary-large"),
      spinner("spinner-large"),
      el("h1", { class: "title", text: t("clicked.title") }),
      el("p", { class: "subtitle", text: t("clicked.sub") }),
      el("div", { class: "screen-foot" }, cancelButton(false)),
    ]);
  }

  function screenOrderCreated(values) {
    var amount = amountOf(values);
    var closing = values.closing === true;
    var gopay = values.payment_type === "gopay";
    var qrBox = el("div", { class: "qr-box" });
    var qrText = typeof values.qr_string === "string" && values.qr_string ? values.qr_string : null;
    var qrAlt = t("pay.qrAlt", { amount: formatRupiah(amount) });
    if (qrText && window.qrcode) {
      var canvas = el("canvas", { class: "qr-canvas", "data-testid": "qr-canvas", role: "img", "aria-label": qrAlt });
      canvas.dataset.payload = qrText;
      qrBox.appendChild(canvas);
    } else if (!qrText && safeImageUrl(values.qr_image_url, true)) {
      qrBox.appendChild(
        el("img", {
          class: "qr-image",
          "data-testid": "qr-image",
          src: safeImageUrl(values.qr_image_url, true),
          alt: qrAlt,
          draggable: "false",
        }),
      );
    } else {
      qrBox.appendChild(el("p", { class: "qr-missing", "data-testid": "qr-missing", text: t("pay.qrMissing") }));
    }

    var timer;
    if (closing) {
      timer = el("div", { class: "timer timer-checking", "data-testid": "checking", role: "status" }, [
        spinner("spinner-small"),
        el("span", { text: t("pay.checking") }),
      ]);
    } else if (values.expires_at !== null && values.expires_at !== undefined && isFinite(Number(values.expires_at))) {
      var left = secondsLeft(values.expires_at, Date.now());
      timer = el("div", { class: "timer" + (left <= URGENT_S ? " urgent" : "") }, [
        icon("clock"),
        el("span", { class: "timer-label", text: t("pay.timeLeft") }),
        el("span", {
          class: "countdown",
          "data-testid": "countdown",
          "data-expires-at": String(values.expires_at),
          role: "timer",
          "aria-live": "off",
          text: formatCountdown(left),
        }),
      ]);
    }

    return el("section", { class: "screen screen-pay" + (closing ? " is-closing" : "") }, [
      el("div", { class: "pay-qr" }, [
        el("div", { class: "qr-card" }, [
          el("div", { class: "qr-card-head" }, [
            el("span", { class: "qris-mark", text: gopay ? "GoPay" : "QRIS" }),
            el("span", { class: "qr-card-title", text: t("pay.title") }),
          ]),
          qrBox,
        ]),
      ]),
      el("div", { class: "pay-info" }, [
        orderSummary(values, "summary-pay", true),
        amount !== null
          ? el("div", { class: "pay-total" }, [
              el("span", { class: "pay-total-label", text: t("pay.total") }),
              el("span", { class: "pay-total-value", "data-testid": "amount", text: formatRupiah(amount) }),
            ])
          : null,
        el("p", { class: "pay-hint", text: gopay ? t("pay.hint.gopay") : t("pay.hint.qris") }),
        timer || null,
        el("div", { class: "screen-foot" }, cancelButton(closing)),
        orderIdLine(values, false),
      ]),
    ]);
  }

  function screenPaymentSuccess(values) {
    return el("section", { class: "screen screen-result screen-success" }, [
      statusBadge("success", "check"),
      el("h1", { class: "title", text: t("success.title") }),
      el("p", { class: "subtitle", text: t("success.sub") }),
      orderSummary(values, ""),
    ]);
  }

  function screenDispensing(values) {
    var drink = drinkOf(values);
    var pour = el("div", { class: "pour", "aria-hidden": "true" }, [
      el("div", { class: "pour-nozzle" }),
      el("div", { class: "pour-stream" }),
      el("div", { class: "pour-cup" }, [el("div", { class: "pour-liquid" }), el("div", { class: "pour-shine" })]),
    ]);
    var colour = drink && LIQUID_COLOURS[drink.id];
    if (colour) pour.style.setProperty("--liquid", colour);
    return el("section", { class: "screen screen-result screen-dispensing" }, [
      pour,
      el("h1", { class: "title", text: t("dispensing.title") }),
      el("p", { class: "subtitle", text: t("dispensing.sub") }),
      orderSummary(values, ""),
    ]);
  }

  function tapHint() {
    return el("div", { class: "screen-foot" }, [
      el(
        "button",
        { type: "button", class: "btn btn-primary", "data-testid": "done", onclick: onDismiss },
        [icon("check"), el("span", { text: t("done") })],
      ),
      el("p", { class: "tap-hint", text: t("tapToFinish") }),
    ]);
  }

  function screenDispensed(values) {
    var drink = drinkOf(values);
    return el("section", { class: "screen screen-result screen-enjoy" }, [
      el("div", { class: "enjoy-art" }, [
        el("div", { class: "enjoy-glow", "aria-hidden": "true" }),
        drink ? drinkImage(drink, "enjoy-icon") : statusBadge("success", "check"),
      ]),
      el("h1", { class: "title title-hero", text: t("dispensed.title") }),
      el("p", { class: "subtitle", text: t("dispensed.sub") }),
      tapHint(),
    ]);
  }

  function screenPaymentFailed(values) {
    var reason = FAIL_REASONS.indexOf(values.reason) >= 0 ? values.reason : "unknown";
    var detail = t("fail." + reason + ".detail");
    var needsStaff = reason === "amount_mismatch";
    return el("section", { class: "screen screen-result screen-failed" }, [
      reason === "cancelled" ? statusBadge("neutral", "cross") : statusBadge("warning", "info"),
      el("div", { class: "reason", "data-testid": "reason", "data-reason": String(values.reason || "") }, [
        el("h1", { class: "title", text: t("fail." + reason) }),
        el("p", { class: "subtitle", text: detail }),
      ]),
      orderSummary(values, "summary-muted"),
      orderIdLine(values, needsStaff),
      tapHint(),
    ]);
  }

  function screenDispenseFailed(values) {
    var refund = REFUND_OUTCOMES.indexOf(values.refund) >= 0 ? values.refund : "owed";
    var amount = amountOf(values);
    var lines;
    if (refund === "refunded") {
      lines = [
        el("p", {
          class: "subtitle",
          text: amount !== null ? t("refund.refunded", { amount: formatRupiah(amount) }) : t("refund.refunded.noAmount"),
        }),
        el("p", { class: "note", text: t("refund.refunded.note") }),
      ];
    } else {
      lines = [el("p", { class: "subtitle", text: t("refund." + refund) })];
    }
    return el("section", { class: "screen screen-result screen-failed" }, [
      statusBadge(refund === "refunded" ? "neutral" : "warning", refund === "refunded" ? "refund" : "staff"),
      el("div", { class: "reason", "data-testid": "reason", "data-refund": String(values.refund || "") }, [
        el("h1", { class: "title", text: t("dispenseFailed.title") }),
      ].concat(lines)),
      orderIdLine(values, refund !== "refunded"),
      tapHint(),
    ]);
  }

  function screenOutOfService() {
    return el("section", { class: "screen screen-result screen-oos" }, [
      statusBadge("neutral", "wrench"),
      el("h1", { class: "title", text: t("oos.title") }),
      el("p", { class: "subtitle", text: t("oos.sub") }),
    ]);
  }

  var BUILDERS = {
    IDLE: screenIdle,
    SHOW_MENU: screenMenu,
    MENU_CLICKED: screenMenuClicked,
    ORDER_CREATED: screenOrderCreated,
    PAYMENT_SUCCESS: screenPaymentSuccess,
    DISPENSING: screenDispensing,
    DISPENSED: screenDispensed,
    PAYMENT_FAILED: screenPaymentFailed,
    DISPENSE_FAILED: screenDispenseFailed,
    OUT_OF_SERVICE: screenOutOfService,
  };

  function announcement(frame) {
    var v = frame.values || {};
    switch (frame.event) {
      case "IDLE": return t("idle.cta");
      case "SHOW_MENU": return t("menu.title");
      case "MENU_CLICKED": return t("clicked.title");
      case "ORDER_CREATED":
        return v.closing === true ? t("pay.checking") : t("pay.announce", { amount: formatRupiah(amountOf(v)) });
      case "PAYMENT_SUCCESS": return t("success.title");
      case "DISPENSING": return t("dispensing.title");
      case "DISPENSED": return t("dispensed.title") + " " + t("dispensed.sub");
      case "PAYMENT_FAILED": {
        var reason = FAIL_REASONS.indexOf(v.reason) >= 0 ? v.reason : "unknown";
        return t("fail." + reason) + ". " + t("fail." + reason + ".detail");
      }
      case "DISPENSE_FAILED": return t("dispenseFailed.title");
      case "OUT_OF_SERVICE": return t("oos.title");
      default: return "";
    }
  }

  // --- Rendering ------------------------------------------------------------------------------

  function render() {
    clearInterval(tickTimer);
    tickTimer = null;
    var frame = kiosk.frame;
    var screenName = frame ? frame.event : "CONNECTING";
    var values = frame ? frame.values : null;
    if (screenName !== "SHOW_MENU" && (values === null || typeof values !== "object" || Array.isArray(values))) {
      values = {};
    }
    var screen = frame ? BUILDERS[screenName](values) : screenConnecting();
    screen.setAttribute("data-testid", "screen");
    stage.replaceChildren(screen);
    document.body.dataset.screen = screenName;
    document.body.classList.toggle("is-result", RESULT_SCREENS.indexOf(screenName) >= 0);
    if (screenName === "ORDER_CREATED") {
      drawQr();
      startCountdown();
    }
  }

  function drawQr() {
    var canvas = stage.querySelector("canvas.qr-canvas");
    if (!canvas) return;
    var box = canvas.parentNode;
    var size = Math.floor(Math.min(box.clientWidth, box.clientHeight));
    if (!(size > 0)) size = 480;
    try {
      paintQr(canvas, qrModules(window.qrcode, canvas.dataset.payload), size, 4);
    } catch (err) {
      // A payload beyond version 40 cannot be drawn; say so rather than show a broken code.
      console.error("kiosk: QR encode failed", err);
      box.replaceChildren(el("p", { class: "qr-missing", "data-testid": "qr-missing", text: t("pay.qrMissing") }));
    }
  }

  /**
   * Paints QR modules, black on white, with a quiet zone of `quiet` modules. Every module gets
   * the same whole number of device pixels so that edges stay sharp; the canvas is then shown
   * at (at most) cssSize CSS pixels.
   */
  function paintQr(canvas, modules, cssSize, quiet) {
    var total = modules.length + quiet * 2;
    var ratio = window.devicePixelRatio || 1;
    var scale = Math.max(1, Math.floor((cssSize * ratio) / total));
    var px = total * scale;
    canvas.width = px;
    canvas.height = px;
    canvas.style.width = px / ratio + "px";
    canvas.style.height = px / ratio + "px";
    var ctx = canvas.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, px, px);
    ctx.fillStyle = "#000000";
    for (var r = 0; r < modules.length; r++) {
      for (var c = 0; c < modules.length; c++) {
        if (modules[r][c]) ctx.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
      }
    }
  }

  function startCountdown() {
    var countdown = stage.querySelector("[data-testid=countdown]");
    if (!countdown) return;
    var expiresAt = Number(countdown.getAttribute("data-expires-at"));
    var timer = countdown.parentNode;
    var update = function () {
      var left = secondsLeft(expiresAt, Date.now());
      var text = formatCountdown(left);
      if (countdown.textContent !== text) countdown.textContent = text;
      timer.classList.toggle("urgent", left <= URGENT_S);
    };
    update();
    // Ticks four times a second so the display never lags a whole second behind.
    tickTimer = setInterval(update, 250);
  }

  function announce(text) {
    if (!text || text === lastAnnounced) return;
    lastAnnounced = text;
    announcer.textContent = text;
  }

  function renderChrome() {
    document.documentElement.lang = kiosk.lang;
    langButton.setAttribute("aria-label", t("lang.switch"));
    langButton.querySelectorAll("[data-lang]").forEach(function (span) {
      span.classList.toggle("active", span.getAttribute("data-lang") === kiosk.lang);
    });
    var state = connectionEl.getAttribute("data-state");
    connectionEl.querySelector(".connection-text").textContent = t("conn." + state);
  }

  function setConnection(state) {
    connectionEl.setAttribute("data-state", state);
    connectionEl.querySelector(".connection-text").textContent = t("conn." + state);
    document.body.classList.toggle("is-offline", state !== "connected");
  }

  function showToast(text) {
    clearTimeout(toastTimer);
    toastEl.textContent = text;
    toastEl.hidden = false;
    // Restart the entrance animation for a repeated message.
    toastEl.classList.remove("show");
    void toastEl.offsetWidth;
    toastEl.classList.add("show");
    toastTimer = setTimeout(function () {
      toastEl.classList.remove("show");
      toastEl.hidden = true;
    }, TOAST_MS);
  }

  // --- Customer actions -----------------------------------------------------------------------

  function send(event, values) {
    if (!socket || socket.readyState !== 1) {
      showToast(t("toast.offline"));
      return false;
    }
    socket.send(JSON.stringify({ event: event, values: values }));
    return true;
  }

  function onStart() {
    if (pending.start || kiosk.state !== "IDLE") return;
    if (send("SHOW_MENU", {})) {
      pending.start = true;
      var button = stage.querySelector("[data-testid=start]");
      if (button) button.disabled = true;
    }
  }

  function onOrder(id) {
    // One order per menu: the grid stays disabled until the next SHOW_MENU frame (or an ERROR).
    if (pending.order || kiosk.state !== "SHOW_MENU") return;
    if (send("ORDER", { id: id, total: 1 })) {
      pending.order = id;
      render();
    }
  }

  function onCancel() {
    if (pending.cancel) return;
    if (kiosk.state === "ORDER_CREATED" && kiosk.frame.values && kiosk.frame.values.closing === true) return;
    if (send("CANCEL", {})) {
      pending.cancel = true;
      stage.querySelectorAll("[data-testid=cancel]").forEach(function (button) {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
        var label = button.querySelector("span");
        if (label && kiosk.state !== "SHOW_MENU") label.textContent = t("cancelling");
      });
    }
  }

  function onDismiss(event) {
    if (event) event.stopPropagation();
    if (pending.dismiss || RESULT_SCREENS.indexOf(kiosk.state) < 0) return;
    if (send("SHOW_MENU", {})) pending.dismiss = true;
  }

  function onLanguage() {
    kiosk.lang = kiosk.lang === "id" ? "en" : "id";
    try {
      window.localStorage.setItem(LANG_KEY, kiosk.lang);
    } catch (e) {
      // Storage may be disabled in kiosk mode; the switch still works for this session.
    }
    renderChrome();
    lastAnnounced = null;
    render();
    if (kiosk.frame) announce(announcement(kiosk.frame));
  }

  // --- Frames -------------------------------------------------------------------------------

  function onFrame(frame) {
    kiosk.lastFrame = frame;
    if (frame.event === "ERROR") {
      var v = frame.values && typeof frame.values === "object" ? frame.values : {};
      kiosk.lastError = v;
      var code = ERROR_CODES.indexOf(v.code) >= 0 ? v.code : "generic";
      showToast(t("error." + code));
      // The refused command changed nothing: let the customer try again on the same screen.
      var hadPending = pending.order || pending.cancel || pending.start || pending.dismiss;
      pending = { start: false, order: null, cancel: false, dismiss: false };
      if (hadPending) render();
      return;
    }
    if (SCREENS.indexOf(frame.event) < 0) {
      console.warn("kiosk: ignoring unknown event", frame.event);
      return;
    }
    kiosk.frame = frame;
    kiosk.state = frame.event;
    pending = { start: false, order: null, cancel: false, dismiss: false };
    render();
    announce(announcement(frame));
  }

  function onMessage(message) {
    var frame;
    try {
      frame = JSON.parse(message.data);
    } catch (e) {
      console.warn("kiosk: ignoring a frame that is not JSON");
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.event !== "string") {
      console.warn("kiosk: ignoring a frame without an event");
      return;
    }
    onFrame(frame);
  }

  // --- Connection ---------------------------------------------------------------------------

  function connect() {
    reconnectTimer = null;
    setConnection(kiosk.frame ? "reconnecting" : "connecting");
    var ws;
    try {
      ws = new WebSocket(kiosk.url);
    } catch (e) {
      console.error("kiosk: cannot open", kiosk.url, e);
      scheduleReconnect();
      return;
    }
    socket = ws;
    connectTimer = setTimeout(function () {
      if (ws.readyState === 0) ws.close();
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = function () {
      clearTimeout(connectTimer);
      attempt = 0;
      kiosk.connected = true;
      setConnection("connected");
      // The server sends the current screen on connect; until it does, the old one stays
      // (a reconnect never resets a payment in progress).
    };
    ws.onmessage = function (message) {
      if (socket === ws) onMessage(message);
    };
    ws.onclose = function () {
      clearTimeout(connectTimer);
      if (socket !== ws) return;
      socket = null;
      kiosk.connected = false;
      setConnection(kiosk.frame ? "reconnecting" : "connecting");
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    // +-20% jitter so that several screens do not reconnect in lockstep after a restart.
    var delay = Math.min(RECONNECT_MAX_MS, reconnectDelay(attempt) * (0.8 + Math.random() * 0.4));
    attempt += 1;
    reconnectTimer = setTimeout(connect, delay);
  }

  // --- Start ----------------------------------------------------------------------------------

  function start() {
    stage = document.getElementById("stage");
    announcer = document.getElementById("announcer");
    toastEl = document.getElementById("toast");
    connectionEl = document.getElementById("connection");
    langButton = document.getElementById("lang-switch");

    var saved = null;
    try {
      saved = window.localStorage.getItem(LANG_KEY);
    } catch (e) {
      saved = null;
    }
    kiosk.lang = LANGS.indexOf(saved) >= 0 ? saved : "id";

    langButton.addEventListener("click", onLanguage);
    // A result screen is dismissed by a tap anywhere on it.
    stage.addEventListener("click", function (event) {
      if (RESULT_SCREENS.indexOf(kiosk.state) >= 0) onDismiss(event);
    });
    // Touch kiosk: no context menu, no text selection, no dragging, no pinch zoom.
    ["contextmenu", "selectstart", "dragstart", "gesturestart"].forEach(function (type) {
      document.addEventListener(type, function (event) {
        event.preventDefault();
      });
    });
    // Back online: try at once rather than wait out the backoff.
    window.addEventListener("online", function () {
      if (socket || !reconnectTimer) return;
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
      attempt = 0;
      connect();
    });
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        if (kiosk.state === "ORDER_CREATED") drawQr();
      }, 100);
    });

    renderChrome();
    render();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
